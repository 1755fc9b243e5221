"""Named running sums of the values an update logs, kept inside the learner so that logging costs no synchronisation
per step (Run reads and restarts them every --log-every steps)."""
import torch
import torch.nn as nn


class MetricSums(nn.Module):
    """Sums of logged values over the updates since the last log, as a buffer of the learner: adding them costs one
    fused tensor operation in the compiled update and no synchronisation. Values are passed by their TensorBoard
    tag; an update adds exactly the tags declared here, each with its own name (no positional order to keep)."""

    def __init__(self, *tags):
        super().__init__()
        self.tags = tags
        self.register_buffer("sums", torch.zeros(len(tags) + 1, dtype=torch.float64))  # the last: updates counted

    def add(self, ok, values):
        """Adds one update's {tag: 0-d tensor} to the sums if `ok` (a boolean tensor) is true."""
        if set(values) != set(self.tags):
            raise KeyError(f"logged {sorted(values)}, declared {sorted(self.tags)}")
        row = torch.stack([values[tag].detach().double().reshape(()) for tag in self.tags] + [ok.double()])
        self.sums += torch.where(ok, row, 0)

    def pop_means(self):
        """{tag: mean over the updates since the last call} (empty if there were none), and restarts the sums."""
        count = float(self.sums[-1])
        means = dict(zip(self.tags, (self.sums[:-1] / count).tolist())) if count else {}
        self.sums.zero_()
        return means
