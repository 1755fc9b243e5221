"""The run itself: its directory, counters, random streams, logs, checkpoints, stops and exit status (Run).

A run has one order, and each step refuses to come before the one it needs (a RuntimeError names it):

    run = Run(ALGO, args, checkpoint)        # the run directory, seeding; nothing else
    env = run.make_env(...)                  # the training environment, counting and checking every step
    run.start(learner, summary, policy=learner.evaluation_action, parts={"actor": learner.actor, ...})
                                             # a resumed run's state restored (or --init-from loaded), args.json,
                                             # TensorBoard and wandb; from here Ctrl-C and SIGTERM stop it cleanly
    update = run.compile(learner, example)   # the update compiled, or the learner itself, and why (args.json)
    with run.guard():                        # whatever ends the loop: state saved, environment closed, logs flushed
        now = reset() if run.running() else None   # (a Ctrl-C while compiling: the robot never moves)
        while run.running():
            ... = env.step(now.action.numpy())
            seen = run.count_step(reward, raw_next_obs)   # the run's step counters; False: a non-finite value,
                                                          # skipped (--on-nonfinite skip)
            out = run.step(update, inputs) if seen else None   # the update, timed
            run.log_window()                 # every --log-every steps: the learner's metrics, latency, SPS
            if run.episode_over(out, terminated, truncated):
                ... the learner's own end of episode ...
                run.end_episode(info)        # logs, evaluation and checkpoint when due
    return run.finish()                      # the exit status; summary.json and the .model when finished

Every counter has one writer. The run's step, episode and return counters are written by count_step() and
end_episode() alone; the learner's own counters (a time feature's episode step, transitions stored) are its buffers,
written by its update.

What the run knows of a learner is what the script hands it: an nn.Module whose state_dict() is its complete state
(checkpoints), the MetricSums inside it (logged every --log-every steps), the update's outputs (a NamedTuple with an
`ok` field: false when the update was not applied), an evaluation policy and the modules that make the policy. It
never calls into the algorithm otherwise.
"""
import dataclasses
import json
import math
import random
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import robots

from .checkpoints import check_spaces, load_policy, load_policy_source, made_with, save_atomic, save_model, space_sizes
from .compiling import CompileError, check_torch, compile_update
from .environments import env_random_state, load_task_state, make_env, set_env_random_state, task_state
from .errors import NonFiniteStop, RunError
from .evaluation import run_episodes
from .flags import PixelArgs, resume_command
from .logs import RunLog
from .metrics import MetricSums
from .plasticity import Plasticity

EVAL_SEED_OFFSET = 1_000_000  # evaluation episode i starts from reset(seed=args.seed + EVAL_SEED_OFFSET + i)
AUTO_COMPILE_STEPS = 10_000  # --compile auto compiles budgets of at least this many steps
STAGES = ("made", "has_env", "started", "compiled", "looping", "finished")


class Run:
    """One training run (see the module docstring for its order)."""

    def __init__(self, algo, args, checkpoint=None):
        self.algo, self.args, self.checkpoint = algo, args, checkpoint
        args.exp_name = args.exp_name or algo
        args.run_name = args.run_name or \
            f"{args.env.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        self.dir = Path("runs") / args.run_name  # made by start(), once the arguments and environment are accepted
        # Seeding: every source of randomness. The learner's noise has its own generator, saved in checkpoints.
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.set_num_threads(1)  # thread pools only slow one-sample updates down
        self.noise_gen = torch.Generator().manual_seed(args.seed)
        self.stage = "made"
        self.env = self.eval_env = self.learner = self.policy = self.log = None
        self.parts, self.metrics, self.probes, self.update_mode = {}, [], [], None
        self.task = None  # the changing task's {"friction", "segment", ...} at the last episode end, if it has one
        self.stop_signal, self.old_handlers = None, {}
        self.global_step = self.episodes = self.skipped = self.exit_code = 0
        self.episode_return, self.episode_length, self.recent_returns = 0.0, 0, []
        self.last_ok, self.in_update = True, False  # the last update's flag; whether an update is running now
        self.wandb_id, self.message = None, ""
        self.last_checkpoint_step = self.last_eval_step = self.last_probe_step = 0

    def _require(self, stage, doing):
        if STAGES.index(self.stage) < STAGES.index(stage):
            needed = {"has_env": "make_env()", "started": "start()", "compiled": "compile()",
                      "looping": "guard()"}[stage]
            raise RuntimeError(f"Run.{doing} needs Run.{needed} first (the order: Run(), make_env(), start(), "
                               "compile(), guard() around the loop, finish())")

    @property
    def resumed(self):
        return self.checkpoint is not None

    # ---------------------------------------------------------------------------------------------- set-up
    def make_env(self, **checks):
        """The training environment (see environments.make_env for `checks`), seeded. With --eval-every, also the
        evaluation environment, a separate instance without video."""
        if self.env is not None:
            raise RuntimeError("Run.make_env() is called once")
        self.env = make_env(self.args, self.algo, **checks)
        self.env.action_space.seed(self.args.seed)
        if self.args.eval_every:
            self.eval_env = make_env(dataclasses.replace(self.args, capture_video=False), self.algo, **checks)
        self.stage = "has_env"
        return self.env

    def start(self, learner, summary="", policy=None, parts=None):
        """Restores a resumed run's learner, counters and random streams, or loads --init-from's `parts` into a new
        one; writes args.json; opens TensorBoard and wandb; from here on Ctrl-C and SIGTERM stop the run at the next
        step (or before the first). policy(raw_obs, episode_step, generator) is the evaluation action (--eval-every);
        parts ({name: module of the learner}) are what a .model holds and --init-from loads."""
        self._require("has_env", "start()")
        args = self.args
        self.learner, self.policy, self.parts = learner, policy, dict(parts or {})
        self.metrics = [m for m in learner.modules() if isinstance(m, MetricSums)]
        self.probes = [m for m in learner.modules() if isinstance(m, Plasticity)]
        try:
            self._restore(learner)
            try:  # made only now: a refused flag, environment or checkpoint leaves no directory behind
                (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunError(f"cannot write the run directory {self.dir}: {e.strerror}") from None
            self._write_args()
            print(f"{self.algo}.py on {args.env}: {summary}; logging to {self.dir}")
            if isinstance(args, PixelArgs) and args.action_repeat > 1:
                print(f"counting agent steps: each action is held for {args.action_repeat} environment steps "
                      "(--total-timesteps, global_step and the plots count agent steps)")
            self.log = RunLog(self.dir, args, self.global_step, self.resumed, self.wandb_id)
            self.wandb_id = self.log.wandb_id
        except BaseException:
            self._close_envs()
            raise
        self.last_checkpoint_step = self.last_eval_step = self.last_probe_step = self.global_step
        self.old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.stage = "started"

    def _restore(self, learner):
        args, checkpoint = self.args, self.checkpoint
        if checkpoint:
            sizes = space_sizes(self.env)
            if (checkpoint["obs_dim"], checkpoint["act_dim"]) != sizes:
                raise RunError(f"checkpoint shapes (obs {checkpoint['obs_dim']}, action {checkpoint['act_dim']}) do "
                               f"not match {args.env} (obs {sizes[0]}, action {sizes[1]})")
            try:
                learner.load_state_dict(checkpoint["learner"])  # copies in place
            except RuntimeError as e:
                raise RunError(f"the checkpoint's learner state does not fit this {self.algo}.py "
                               f"({str(e).splitlines()[0]})") from None
            self.global_step, self.episodes = checkpoint["global_step"], checkpoint["episodes"]
            load_task_state(self.env, checkpoint.get("task"))  # a changing task goes on where it was
            self.wandb_id = checkpoint["wandb_id"]
            self.noise_gen.set_state(checkpoint["rng"]["noise"])
            torch.set_rng_state(checkpoint["rng"]["torch"])
            np.random.set_state(checkpoint["rng"]["numpy"])
            random.setstate(checkpoint["rng"]["python"])
        elif args.init_from:
            source = load_policy_source(args.init_from, self.algo)
            check_spaces(self.env, source, args.init_from)
            load_policy(learner, self.parts, source)
            print(f"starting from {source['path']} (step {source['global_step']} of {source['args']['run_name']})")

    def _write_args(self):
        # written once a script has filled in the defaults that depend on the environment, again when compile() knows
        # how the update runs
        record = {"algo": self.algo, **asdict(self.args), "made_with": made_with()}
        if self.update_mode is not None:
            record["update"] = self.update_mode
        (self.dir / "args.json").write_text(json.dumps(record, indent=1))

    def _on_signal(self, signum, frame):
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C kills at once

    def compile(self, learner, example_inputs):
        """The update: compiled (--compile on, or auto with a budget of at least 10k steps), else the learner itself.
        args.json ("update") and the start-up line say which, and why. Compiled before the first reset: a real
        robot must not wait for the compiler mid-episode."""
        self._require("started", "compile()")
        mode, update = self.args.compile, learner
        if mode == "off":
            self.update_mode = {"compiled": False, "why": "--compile off"}
        elif mode == "auto" and self.args.total_timesteps < AUTO_COMPILE_STEPS:
            self.update_mode = {"compiled": False, "why": f"--compile auto with a budget under {AUTO_COMPILE_STEPS} "
                                                          "steps"}
        else:
            t0 = time.perf_counter()
            try:
                check_torch()  # before any private torch call; the compiler's child checks again
                print("compiling the update (in a child process; cached on disk for later runs)...", flush=True)
                update = compile_update(learner, example_inputs, interrupted=lambda: self.stop_signal is not None)
                seconds = time.perf_counter() - t0
                self.update_mode = {"compiled": True, "why": f"--compile {mode}", "seconds": round(seconds, 1)}
                self.log.scalar("charts/compile_seconds", seconds, self.global_step)
            except CompileError as e:
                if self.stop_signal is not None:  # Ctrl-C while compiling: the loop will not start
                    self.update_mode = {"compiled": False, "why": "interrupted while compiling"}
                elif mode == "on":
                    self._close_envs()
                    self.log.close(2)
                    raise RunError(f"compiling the update failed ({e}); run with --compile off") from None
                else:
                    self.update_mode = {"compiled": False, "why": f"--compile auto: compiling failed ({e})"}
                    print(f"warning: the update runs eager, 4-8 times slower: compiling failed ({e})",
                          file=sys.stderr)
        self._write_args()
        how = "compiled" if self.update_mode["compiled"] else "eager"
        took = f", {self.update_mode['seconds']} s" if "seconds" in self.update_mode else ""
        print(f"update: {how} ({self.update_mode['why']}{took})")
        self.stage = "compiled"
        return update

    # ------------------------------------------------------------------------------------------- per step
    def running(self):
        """Whether the loop goes on: budget left and no stop asked for."""
        return self.global_step < self.args.total_timesteps and self.stop_signal is None

    def reset_env(self):
        """env.reset(): seeded at the run's first step; on resuming, the environment's saved random stream."""
        self._require("looping", "reset_env()")
        checkpoint = self.checkpoint
        if checkpoint and (self.episodes, self.global_step) == (checkpoint["episodes"], checkpoint["global_step"]):
            set_env_random_state(self.env, checkpoint["rng"]["env"])
            raw_obs, _ = self.env.reset()
        else:
            raw_obs, _ = self.env.reset(seed=self.args.seed if self.global_step == 0 else None)
        self.log.loop_starts(self.global_step)
        return raw_obs

    def count_step(self, reward, next_obs):
        """Counts the environment step just taken (the run's step, the episode's length and return) and checks its
        reward (in float32, as the learner sees it) and observation. Returns whether the learner may see them: a
        non-finite one stops the run (exit 3, the last good state saved) or, with --on-nonfinite skip, is counted,
        and the script skips that update (the episode then ends). A non-finite reward stays out of the return."""
        self._require("looping", "count_step()")
        self.global_step += 1
        self.episode_length += 1
        culprit = nonfinite_input(reward, next_obs)
        if culprit != "reward":
            self.episode_return += float(reward)
        if culprit is not None:
            self._nonfinite(culprit)
            return False
        return True

    def _nonfinite(self, culprit):
        """A non-finite value at this step, whose update is not applied: with --on-nonfinite stop the run ends here
        (exit 3, the last good state saved); with skip it is counted and the run goes on."""
        self.skipped += 1
        if self.args.on_nonfinite == "stop":
            raise NonFiniteStop(culprit)

    def step(self, fn, inputs, timed=True):
        """fn(inputs): the update (timed for this log window's latency percentiles unless `timed` is false), and its
        outputs. An update whose outputs say not ok (a non-finite loss or gradient) stops the run, or with skip is
        counted. An exception raised inside it may leave the learner half-updated: guard() then saves nothing."""
        watched = [probe for probe in self.probes if probe.watching(self.global_step)]
        for probe in watched:  # --plasticity-every's update norm: a few steps before each report, outside the timing
            probe.before_update()
        t0 = time.perf_counter()
        self.in_update = True
        out = fn(inputs)
        self.in_update = False
        if timed:
            self.log.update_took(time.perf_counter() - t0)
        for probe in watched:
            probe.after_update(bool(out.ok))
        self.last_ok = bool(out.ok)
        if not self.last_ok:
            self._nonfinite("loss or gradient")
        return out

    def log_window(self):
        """Every --log-every steps: the means of the learner's MetricSums, update latency, skips and SPS; and the
        learner's Plasticity report when it is due (computed here, outside the update)."""
        last = self.log.window_step
        self.log.window(self.global_step, self.metrics, self.skipped)
        for probe in self.probes:
            if self.log.window_step != last and probe.due(self.global_step, self.last_probe_step):
                for tag, value in probe.report().items():
                    self.log.scalar(tag, value, self.global_step)
                self.last_probe_step = self.global_step

    def episode_over(self, out, terminated, truncated):
        """Whether the episode ends at this step: it terminated or was truncated, the step was skipped (out is None),
        or a failed update's outputs are not finite (no action to send). The script then does the learner's own end
        of episode and calls end_episode()."""
        if out is None or terminated or truncated:
            return True
        return not self.last_ok and not all(torch.isfinite(t).all() for t in out if t.is_floating_point())

    def end_episode(self, info):
        """Logs the episode that just ended, prints the console line (at most one a second), evaluates the policy when
        --eval-every is due and writes a checkpoint when one is due. Call it after the learner's own end of episode."""
        self.episodes += 1
        self.recent_returns = (self.recent_returns + [self.episode_return])[-10:]
        self.task = info.get("task", self.task)
        self.log.episode(self.global_step, self.episodes, self.episode_return, self.episode_length, info)
        self.episode_return, self.episode_length = 0.0, 0
        every = self.args.eval_every
        if every and self.policy is not None and self.global_step // every > self.last_eval_step // every:
            self.evaluate()
        if self.args.checkpoint_every and self.global_step - self.last_checkpoint_step >= self.args.checkpoint_every:
            self.save_checkpoint(mid_episode=False)
            self.last_checkpoint_step = self.global_step

    def evaluate(self):
        """--eval-episodes episodes of the policy's deterministic action without learning, on the evaluation
        environment; the same start states every time. Touches none of training's random streams, so a run gives the
        same training returns with and without evaluation."""
        load_task_state(self.eval_env, task_state(self.env), hold=True)  # the task as training meets it now
        returns, lengths = run_episodes(self.eval_env, self.policy, self.args.eval_episodes,
                                        self.args.seed + EVAL_SEED_OFFSET)
        self.log.scalar("eval/episodic_return", np.mean(returns), self.global_step)
        self.log.scalar("eval/episodic_return_std", np.std(returns), self.global_step)
        self.log.scalar("eval/episodic_length", np.mean(lengths), self.global_step)
        print(f"eval at global_step={self.global_step}: mean return {np.mean(returns):.1f} (std {np.std(returns):.1f}) "
              f"over {len(returns)} episodes")
        self.last_eval_step = self.global_step

    # ------------------------------------------------------------------------------------------- the end
    def save_checkpoint(self, mid_episode):
        self.log.flush()  # the logs up to this step are on disk before the checkpoint that follows them
        path = self.dir / "checkpoints" / f"step_{self.global_step:012d}.pt"
        rng = {"noise": self.noise_gen.get_state(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
               "python": random.getstate(), "env": env_random_state(self.env)}
        obs_dim, act_dim = space_sizes(self.env)
        save_atomic({"algo": self.algo, "args": asdict(self.args), "obs_dim": obs_dim, "act_dim": act_dim,
                     "global_step": self.global_step, "episodes": self.episodes, "mid_episode": mid_episode,
                     "learner": self.learner.state_dict(), "rng": rng, "wandb_id": self.wandb_id,
                     "task": task_state(self.env)}, path)
        for old in sorted(path.parent.glob("step_*.pt"))[:-self.args.keep_checkpoints]:
            old.unlink()
        return path

    @contextmanager
    def guard(self):
        """Around the training loop: whatever ends it (the budget, Ctrl-C/SIGTERM, a non-finite value, a robot fault,
        an exception), the state is saved where it is consistent, the environment (and robot) stopped and closed, the
        logs flushed, and exit_code/message set. Exceptions are not re-raised: finish() reports them."""
        self._require("compiled", "guard()")
        self.stage = "looping"
        resume = resume_command(self.algo, self.dir)
        try:
            yield
            if self.stop_signal is not None:
                path = self.save_checkpoint(mid_episode=True)  # the episode in progress is dropped on resume
                self.exit_code = 130 if self.stop_signal == signal.SIGINT else 143
                self.message = (f"stopped by {signal.Signals(self.stop_signal).name} at step {self.global_step}; "
                                f"checkpoint written to {path}; resume with: {resume}")
        except NonFiniteStop as e:
            path = self.save_checkpoint(mid_episode=True)
            self.exit_code, self.message = 3, (f"non-finite {e} at step {self.global_step}; the update was not "
                                               f"applied and the last good state is saved in {path}")
        except robots.RobotError as e:  # the environment has already stopped the robot
            self.save_checkpoint(mid_episode=True)
            self.exit_code = 4
            self.message = f"robot error at step {self.global_step}: {e}; resume with: {resume}"
        except Exception:  # a bug or a failure: show where, and keep what is consistent
            traceback.print_exc()
            self.exit_code = 1
            if self.in_update:  # the update raised partway: some of its writes may have happened, others not
                last = sorted((self.dir / "checkpoints").glob("step_*.pt"))
                self.message = (f"the update raised at step {self.global_step} (above), so the learner may be "
                                "half-updated and its state was not saved; " +
                                (f"resuming from the last checkpoint, {last[-1].name}, is safe: {resume}" if last else
                                 "no checkpoint was written before it, so there is nothing to resume"))
            else:  # outside the update (the environment, a library): the state is the last update's, whole
                path = self.save_checkpoint(mid_episode=True)
                self.message = (f"failed at step {self.global_step} (above), outside the update; the state before "
                                f"this step is saved in {path} and resuming is safe: {resume}")
        finally:
            self._close_envs()
            self.log.close(self.exit_code)

    def _close_envs(self):
        for env in (self.env, self.eval_env):
            if env is not None:
                env.close()  # stops a real robot

    def finish(self):
        """The exit status. A run that ended early prints why (one line); a finished one writes summary.json and,
        with --save-model, SCRIPT.model (the parts given to start(), with what rebuilding the policy needs)."""
        self._require("looping", "finish()")
        self.stage = "finished"
        for signum, handler in self.old_handlers.items():
            signal.signal(signum, handler)
        if self.exit_code:
            print(f"{self.algo}.py: {self.message}", file=sys.stderr)
            return self.exit_code
        if self.args.save_model:
            save_model(self.dir / f"{self.algo}.model", self.algo, asdict(self.args),
                       {name: module.state_dict() for name, module in self.parts.items()}, self.env, self.global_step)
        (self.dir / "summary.json").write_text(json.dumps({
            "finished": True, "global_step": self.global_step, "episodes": self.episodes,
            "mean_return_last10": float(np.mean(self.recent_returns)) if self.recent_returns else None,
            **({"task": self.task} if self.task is not None else {})}))
        print(f"done: {self.global_step} steps, {self.episodes} episodes, logs in {self.dir}")
        return 0


def nonfinite_input(reward, next_obs):
    """Names a non-finite reward (in float32, as the learner sees it) or observation, else None."""
    reward = float(reward)
    if not (math.isfinite(reward) and abs(reward) < 3.4e38):  # float32's largest is 3.40282e38
        with np.errstate(over="ignore"):
            if not np.isfinite(np.float32(reward)):
                return "reward"
    return None if finite_observation(next_obs) else "observation"


def finite_observation(obs):
    """Integer and boolean observations (MinAtar's, images) are always finite; a Dict is checked part by part."""
    if isinstance(obs, dict):
        return all(finite_observation(part) for part in obs.values())
    obs = np.asarray(obs)
    return obs.dtype.kind not in "fc" or bool(np.isfinite(obs).all())
