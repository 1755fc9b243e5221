"""Plasticity: whether a learner can still learn, watched (PlasticityProbe: dormant units, effective rank, weight
magnitude) and restored (ContinualBackprop: the least useful hidden units replaced by fresh ones). docs/algorithms.md 10
has the definitions. The optimiser-side remedies (weight decay, UPGD) are in optimizers.py.

A script hands these its networks' hidden activations in its update (hidden_activations() reads them off an
nn.Sequential trunk), which records them into buffers; what cannot be one fixed-shape step (an SVD; replacing a
varying number of units) is done outside the compiled update. Nothing here knows an algorithm.
"""
import math

import torch
import torch.nn as nn


def hidden_activations(trunk, x):
    """What each hidden layer of `trunk` (an nn.Sequential of layers whose last is a hidden layer) hands on: the input
    of every Linear after the first, and the trunk's output. That is the hidden units' values as the next layer reads
    them (after its normalisation, if one follows the activation: AVG's penultimate norm)."""
    out, first = [], True
    for layer in trunk:
        if isinstance(layer, nn.Linear):
            if not first:
                out.append(x)
            first = False
        x = layer(x)
    return out + [x]


def trunk_outputs(trunk, x, hidden=None):
    """trunk(x); when `hidden` is a list, each hidden layer's units (hidden_activations(), detached) are appended to it
    from the same pass, so that a learner's loss hands the plasticity tools what it computed anyway."""
    if hidden is None:
        return trunk(x)
    layers = hidden_activations(trunk, x)
    hidden.extend(h.detach() for h in layers)
    return layers[-1]


def hidden_layers(trunk, heads, prefix=""):
    """[(name of a hidden Linear of `trunk`, [names of the layers that read its units])]: each Linear of the trunk is
    read by the trunk's next Linear, the last by the `heads`. Trunk layers are named with `prefix` (the trunk's name
    in the network, e.g. "trunk"), heads as given (names in the network, e.g. "mu")."""
    names = [f"{prefix}.{name}" if prefix else name for name, layer in trunk.named_children()
             if isinstance(layer, nn.Linear)]
    return [(name, [names[i + 1]] if i + 1 < len(names) else list(heads)) for i, name in enumerate(names)]


# ------------------------------------------------------------------------------------------------ diagnostics
def dormant_fraction(features, tau):
    """ReDo's tau-dormant share of a layer's units over `features` (samples x units): unit i is dormant when
    s_i = E|h_i| / mean_k E|h_k| <= tau (Sokar et al. 2023)."""
    mean_abs = features.abs().mean(0)
    return float((mean_abs / mean_abs.mean().clamp_min(1e-30) <= tau).double().mean())


def effective_rank(features):
    """exp of the entropy of the normalised singular values of `features` (samples x units) (Roy and Vetterli 2007, as
    the loss-of-plasticity code computes it): between 1 and min(samples, units)."""
    singular = torch.linalg.svdvals(features.double())
    p = singular / singular.sum().clamp_min(1e-300)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_abs_weights(network):
    """{layer name: mean |w|} over the weights of every Linear and Conv2d layer of `network`."""
    return {name: float(layer.weight.detach().abs().mean()) for name, layer in network.named_modules()
            if isinstance(layer, (nn.Linear, nn.Conv2d))}


class PlasticityProbe(nn.Module):
    """The latest `window` activation vectors of each hidden layer of the given networks, in ring buffers that the
    compiled update writes (one row per layer per step); read every `every` steps, outside the update (an SVD has no
    place in a per-step kernel), into TensorBoard tags under plasticity/: each hidden layer's tau-dormant fraction and
    mean |w|, the last hidden layer's effective rank.

    networks: {name: (module, [width of each hidden layer])}; the modules are referred to, not owned."""

    def __init__(self, networks, every, tau=0.025, window=1000):
        super().__init__()
        self.every, self.tau, self.window = every, tau, window
        self.__dict__["networks"] = {name: module for name, (module, _) in networks.items()}  # not our parameters
        self.layers = [(name, i) for name, (_, widths) in networks.items() for i in range(len(widths))]
        for (name, i), width in zip(self.layers, [w for _, widths in networks.values() for w in widths]):
            self.register_buffer(f"{name}_{i}", torch.zeros(window, width))
        self.register_buffer("recorded", torch.zeros(1, dtype=torch.int64))

    def add(self, ok, activations):
        """Records one step's hidden activations, {network name: [one vector per hidden layer]}, if `ok`."""
        slot = self.recorded % self.window
        for name, i in self.layers:
            rows = getattr(self, f"{name}_{i}")
            row = torch.where(ok, activations[name][i].detach().float().reshape(-1), rows.index_select(0, slot)[0])
            rows.index_copy_(0, slot, row.unsqueeze(0))
        self.recorded += ok.long()

    def due(self, step, last_step):
        return self.every > 0 and step // self.every > last_step // self.every

    @torch.no_grad()
    def report(self):
        """{tag: value} from the recorded window (empty until it holds two rows)."""
        filled = min(int(self.recorded), self.window)
        if filled < 2:
            return {}
        scalars = {}
        last = {name: max(i for n, i in self.layers if n == name) for name, _ in self.layers}
        for name, i in self.layers:
            features = getattr(self, f"{name}_{i}")[:filled]
            scalars[f"plasticity/{name}_dormant_{i + 1}"] = dormant_fraction(features, self.tau)
            if i == last[name]:
                scalars[f"plasticity/{name}_effective_rank"] = effective_rank(features)
        for name, module in self.networks.items():
            for layer, value in mean_abs_weights(module).items():
                scalars[f"plasticity/{name}_mean_abs_w/{layer}"] = value
        return scalars


# ------------------------------------------------------------------------------------------- continual backprop
class ContinualBackprop(nn.Module):
    """Continual backprop (Dohare et al., Nature 2024) on the hidden layers of one network. Each unit has an age and a
    contribution utility, traced: u <- eta u + (1 - eta) mean_k |w_out[k, i]| |h_i|, read bias-corrected,
    u / (1 - eta^age). Every step (track(), inside the update) ages grow by one and each layer's count of units due
    grows by rate x (units older than `maturity`). replace(), outside the update, then replaces in each layer with a
    whole unit due its lowest-utility mature unit: its input weights redrawn by `redraw` (the layer's initialisation),
    its bias 0, its outgoing weights 0, its age and utility 0, and what the optimiser holds of all of them forgotten.
    At most one unit per layer per step, the rest carried over: a layer whose units mature together is not replaced
    all at once (a mistake reported of reimplementations, SPEC.md 11).

    layers: hidden_layers()'s [(input layer, [output layers])], names within `network`; redraw(weight, row,
    generator) writes a fresh initial row into weight[row]."""

    def __init__(self, network, layers, rate, maturity, decay, redraw):
        super().__init__()
        self.__dict__["network"] = network  # referred to, not owned
        self.layers, self.rate, self.maturity, self.decay, self.redraw = layers, rate, maturity, decay, redraw
        modules = dict(network.named_modules())
        for i, (name, _) in enumerate(layers):
            units = modules[name].out_features
            self.register_buffer(f"utility_{i}", torch.zeros(units))
            self.register_buffer(f"age_{i}", torch.zeros(units))
            self.register_buffer(f"due_{i}", torch.zeros(1))

    def track(self, ok, activations):
        """One step's utilities and ages from the hidden layers' values (hidden_activations(), one per layer)."""
        modules = dict(self.network.named_modules())
        for i, ((_, readers), h) in enumerate(zip(self.layers, activations)):
            outgoing = torch.cat([modules[reader].weight.abs() for reader in readers], 0).mean(0)
            utility, age, due = (getattr(self, f"{kind}_{i}") for kind in ("utility", "age", "due"))
            keep_ok = ok.float()
            utility.copy_(torch.where(ok, self.decay * utility + (1 - self.decay) * outgoing * h.detach().abs(),
                                      utility))
            age.add_(keep_ok)
            due.add_(keep_ok * self.rate * (age > self.maturity).float().sum())

    @torch.no_grad()
    def replace(self, optimizer, generator):
        """Replaces one unit in each layer with a whole unit due; returns how many it replaced."""
        modules, replaced = dict(self.network.named_modules()), 0
        for i, (name, readers) in enumerate(self.layers):
            utility, age, due = (getattr(self, f"{kind}_{i}") for kind in ("utility", "age", "due"))
            mature = age > self.maturity
            if due.item() < 1 or not mature.any():
                continue
            corrected = utility / (1 - self.decay ** age).clamp_min(1e-12)
            unit = int(torch.where(mature, corrected, torch.inf).argmin())
            layer = modules[name]
            self.redraw(layer.weight, unit, generator)
            layer.bias[unit] = 0.0
            optimizer.forget(f"{name}.weight", unit, 0)
            optimizer.forget(f"{name}.bias", unit, 0)
            for reader in readers:
                modules[reader].weight[:, unit] = 0.0
                optimizer.forget(f"{reader}.weight", unit, 1)
            utility[unit], age[unit] = 0.0, 0.0
            due -= 1
            replaced += 1
        return replaced


WATCHED = 100  # updates before each report whose size (the update norm) is measured


class Plasticity(nn.Module):
    """A learner's plasticity tools, as PlasticityArgs asks for them: the probe (diagnostics, --plasticity-every) over
    its networks and continual backprop on each (--reinit cbp). networks: {name: (network, trunk, head names,
    optimiser)}; redraw(weight, row, generator) draws a fresh initial input-weight row (the script's initialisation)."""

    def __init__(self, networks, args, redraw):
        super().__init__()
        self.__dict__["optimizers"] = {name: parts[3] for name, parts in networks.items()}  # referred to, not owned
        networks = {name: parts[:3] for name, parts in networks.items()}
        widths = {name: [layer.out_features for layer in trunk if isinstance(layer, nn.Linear)]
                  for name, (_, trunk, _) in networks.items()}
        self.probe = PlasticityProbe({name: (network, widths[name]) for name, (network, _, _) in networks.items()},
                                     args.plasticity_every, args.dormant_tau) if args.plasticity_every else None
        self.__dict__["update_norms"] = {name: [] for name in networks}  # of the watched steps since the last report
        self.register_buffer("replaced", torch.zeros(len(networks), dtype=torch.float64))
        prefixes = {name: next(n for n, m in network.named_modules() if m is trunk)
                    for name, (network, trunk, _) in networks.items()}
        self.cbp = nn.ModuleDict({name: ContinualBackprop(network, hidden_layers(trunk, heads, prefixes[name]),
                                                          args.replacement_rate, args.maturity_threshold,
                                                          args.utility_decay, redraw)
                                  for name, (network, trunk, heads) in networks.items()}) \
            if getattr(args, "reinit", "none") == "cbp" else None  # DiagnosticArgs alone: no remedies

    @property
    def active(self):
        return self.probe is not None or self.cbp is not None

    def record(self, ok, hidden):
        """One step's hidden activations, {network name: hidden_activations(...)} (None when inactive), to the probe
        and to CBP's utilities (inside the update)."""
        if self.probe is not None:
            self.probe.add(ok, hidden)
        for name, cbp in (self.cbp or {}).items():
            cbp.track(ok, hidden[name])

    def replace_units(self, generator):
        """CBP's replacements due, outside the update (their number varies); returns how many it made."""
        made = 0
        for i, (name, cbp) in enumerate((self.cbp or {}).items()):
            count = cbp.replace(self.optimizers[name], generator)
            self.replaced[i] += count
            made += count
        return made

    def due(self, step, last_step):
        return self.probe is not None and self.probe.due(step, last_step)

    def watching(self, step):
        """Whether step's update is one of the WATCHED before a report whose size is measured: the run copies the
        parameters before it (before_update) and measures the change after it (after_update), outside the update,
        so that no step pays for a pass over every parameter."""
        return self.probe is not None and (step - 1) % self.probe.every >= self.probe.every - WATCHED  # up to a report

    @torch.no_grad()
    def before_update(self):
        self.__dict__["before"] = {name: [p.clone() for p in net.parameters()]
                                   for name, net in self.probe.networks.items()}

    @torch.no_grad()
    def after_update(self, ok):
        for name, net in self.probe.networks.items():
            if ok:
                change = sum(float((p - b).square().sum()) for p, b in zip(net.parameters(), self.before[name]))
                self.update_norms[name].append(math.sqrt(change))

    def report(self):
        """The probe's tags, each network's mean update norm over the watched steps (plasticity/NAME_update_norm)
        and its units replaced so far (plasticity/NAME_units_replaced)."""
        scalars = self.probe.report()
        for name, norms in self.update_norms.items():
            if norms:
                scalars[f"plasticity/{name}_update_norm"] = sum(norms) / len(norms)
            norms.clear()
        for i, name in enumerate(self.cbp or {}):
            scalars[f"plasticity/{name}_units_replaced"] = float(self.replaced[i])
        return scalars
