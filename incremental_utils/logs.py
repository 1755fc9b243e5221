"""What a run writes as it goes: TensorBoard (CleanRL's tags), wandb, and the console line (RunLog)."""
import collections
import os
import time

import numpy as np

from .errors import RunError


class RunLog:
    """A run's logs. Made by Run.start(); `step` is the run's global step when the log opens (a resumed run purges
    what a killed run logged after its checkpoint)."""

    def __init__(self, run_dir, args, step, resumed, wandb_id=None):
        self.args, self.wandb_id = args, wandb_id
        if args.track:
            self._start_wandb()
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir), purge_step=step + 1 if resumed else None)
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                             "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
        self.update_us, self.n_updates = np.zeros(args.log_every), 0  # latencies of this log window's updates
        self.window_step, self.window_time, self.last_print = step, time.time(), 0.0
        self.speed_samples = collections.deque()  # (time, step) of the last 20 s, for SPS and time_left

    def _start_wandb(self):
        import wandb

        args = self.args
        self.wandb_id = self.wandb_id or os.urandom(4).hex()  # kept in checkpoints: a resumed run continues it
        try:
            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=args.run_name, id=self.wandb_id, resume="allow", save_code=True)
        except Exception as e:  # not logged in, no network, bad entity: wandb's own exception types vary
            raise RunError(f"wandb did not start: {str(e).strip().splitlines()[0]} (WANDB_MODE=offline logs "
                           "locally)") from None

    def scalar(self, tag, value, step):
        self.writer.add_scalar(tag, value, step)

    def loop_starts(self, step):
        """Speeds count from here, not from before compiling."""
        if not self.speed_samples:
            self.speed_samples.append((time.time(), step))
            self.window_time = time.time()

    def update_took(self, seconds):
        self.update_us[self.n_updates % len(self.update_us)] = 1e6 * seconds
        self.n_updates += 1

    def window(self, step, metrics, skipped):
        """Every --log-every steps: the means of the learner's MetricSums, update latency, skips and SPS."""
        if step % self.args.log_every or step <= self.window_step:
            return
        scalars = {tag: mean for sums in metrics for tag, mean in sums.pop_means().items()}
        if self.n_updates:
            scalars.update(zip(("charts/update_us_p50", "charts/update_us_p99", "charts/update_us_max"),
                               np.percentile(self.update_us[:min(self.n_updates, len(self.update_us))], [50, 99, 100])))
        scalars["charts/nonfinite_skips"] = skipped
        scalars["charts/SPS"] = (step - self.window_step) / max(time.time() - self.window_time, 1e-9)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.window_time, self.window_step, self.n_updates = time.time(), step, 0

    def episode(self, step, episodes, episode_return, episode_length, info):
        self.writer.add_scalar("charts/episodic_return", episode_return, step)
        self.writer.add_scalar("charts/episodic_length", episode_length, step)
        if "overruns" in info:
            self.writer.add_scalar("charts/cycle_overruns", info["overruns"], step)
        for key, value in info.get("task", {}).items():  # a changing task's state (tasks/slippery.py): env/friction
            self.writer.add_scalar(f"env/{key}", value, step)
        if time.time() - self.last_print >= 1.0:
            print(self.console_line(step, episodes, episode_return))
            self.last_print = time.time()

    def console_line(self, step, episodes, episode_return):
        """SPS and time_left over the last 20 s of the loop, not since its start (warm-up would count)."""
        now = (time.time(), step)
        samples = self.speed_samples
        while len(samples) > 1 and now[0] - samples[0][0] > 20.0:
            samples.popleft()
        then = samples[0] if samples else now
        sps = (now[1] - then[1]) / max(now[0] - then[0], 1e-9)
        samples.append(now)
        left = (self.args.total_timesteps - step) / sps if sps > 0 else float("inf")
        left_text = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} days"
        return (f"global_step={step}, episode={episodes}, episodic_return={episode_return:.1f}, SPS={sps:.0f}, "
                f"time_left={left_text}")

    def flush(self):
        self.writer.flush()

    def close(self, exit_code):
        self.writer.close()
        if self.args.track:
            import wandb
            wandb.finish(exit_code=exit_code)
