"""Planted submissions that borrow the course's code, break a stated rule, or report a
"measurement" they did not make - each with its honest score and the flag it must raise.

Every plant is the reference solution with one part replaced. Importing a withheld module
fails in the jail (the function raises), so those parts score 0 as any crash does; pasted
reference code and library equivalents run fine there, and score 0 because the scan (scan.py)
finds them in the part's functions and checks.score takes that part's tests. The rule and
measurement plants are caught by the hidden checks' values alone.

The plants are registered in the assignments' own tables (plants.CHECKS for the EMA red team,
balance_plants.PLANTS, allreduce_plants.PLANTS), so the suites that grade those grade these.
``FLAGS[student]``: substrings the CSV's flags column must hold (an empty tuple: no flag about
borrowed code at all); ``NOT_WRITTEN``: the plants whose tests are taken by that rule, not by a
crash or a wrong value (their feedback says so).
"""
from __future__ import annotations

# ---- assignment 1 (EMA) -----------------------------------------------------------------

EMA_HONEST_UPDATE = '''

@torch.no_grad()
def ema_update_(ema_params, params, decay: float) -> None:
    for e, p in zip(ema_params, params):
        e.sub_((1 - decay) * (e - p.detach()))
'''

# reference_impl.training.ema imported inside ema_decay: the jail withholds it.
EMA_IMPORT = '''import torch


def ema_decay(optimization_step, decay=0.9999, min_decay=0.0, update_after_step=0,
              use_ema_warmup=False, inv_gamma=1.0, power=2 / 3):
    from reference_impl.training.ema import EMA

    ema = EMA.__new__(EMA)
    ema._set_schedule(decay, min_decay, update_after_step, use_ema_warmup, inv_gamma, power)
    return ema.get_decay(optimization_step)
''' + EMA_HONEST_UPDATE

# EMA._set_schedule and EMA.get_decay pasted: renamed, reformatted, docstrings gone.
EMA_PASTE = '''import torch


class _Avg:
    def _cfg(me, top=0.999, floor=0.0, after=0, warm=True, g=1.0, pw=2 / 3):
        assert 0.0 <= floor <= top < 1.0, "bad schedule"
        me.top, me.floor, me.after = top, floor, after
        me.warm, me.g, me.pw = warm, g, pw
        me.n = 0

    def at(me, s):
        j = max(0, s - me.after - 1)
        if j <= 0:
            return 0.0
        if me.warm:
            v = 1 - (1 + j / me.g) ** -me.pw
        else:
            v = (1 + j) / (10 + j)
        return max(min(v, me.top), me.floor)


def ema_decay(optimization_step, decay=0.9999, min_decay=0.0, update_after_step=0,
              use_ema_warmup=False, inv_gamma=1.0, power=2 / 3):
    avg = _Avg()
    avg._cfg(decay, min_decay, update_after_step, use_ema_warmup, inv_gamma, power)
    return avg.at(optimization_step)
''' + EMA_HONEST_UPDATE

# torch's own EMA update (a library equivalent that runs in the jail and is right).
EMA_SWA = '''import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


def ema_decay(optimization_step, decay=0.9999, min_decay=0.0, update_after_step=0,
              use_ema_warmup=False, inv_gamma=1.0, power=2 / 3):
    step = max(0, optimization_step - update_after_step - 1)
    if step <= 0:
        return 0.0
    value = 1 - (1 + step / inv_gamma) ** -power if use_ema_warmup else (1 + step) / (10 + step)
    return max(min(value, decay), min_decay)


@torch.no_grad()
def ema_update_(ema_params, params, decay):
    get_ema_multi_avg_fn(decay)(list(ema_params), [p.detach() for p in params], None)
'''

SOL_MEASURED = '''    thetas, emas = simulate_sgd(h, lr, sigma, beta, steps, chains, seed)
    burn = steps // 2
    return float(emas[burn:].var() / thetas[burn:].var())'''
PREDICTED = '''    return predicted_variance_ratio(1 - lr * h, beta)  # the formula: no simulation'''


def _ema_impl(text):
    from .plants import cell, solved

    def make():
        nb = solved()
        cell(nb, "ema_impl").source = text
        return nb
    return make


def ema() -> dict:
    """The EMA assignment's plants (graded with --checks-only in the red-team suite)."""
    from .plants import AUTO_MAX, DECAY, PART_C, UPDATE, nb_plant, replace, solved

    return {
        "ref_import_ema": nb_plant(_ema_impl(EMA_IMPORT), AUTO_MAX - 5, set(DECAY),
                                   why="ema_decay imports reference_impl.training.ema"),
        "ref_paste_ema": nb_plant(_ema_impl(EMA_PASTE), AUTO_MAX - 5, set(DECAY),
                                  why="EMA.get_decay pasted, renamed and reformatted"),
        "swa_update": nb_plant(_ema_impl(EMA_SWA), AUTO_MAX - 4, set(UPDATE),
                               why="ema_update_ is torch.optim.swa_utils' EMA"),
        "measured_is_predicted": nb_plant(
            lambda: replace(solved(), "variance_impl", SOL_MEASURED, PREDICTED),
            AUTO_MAX - 2, {PART_C[1]}, why="the 'measurement' returns Part A's formula"),
    }


# ---- assignment 2 (balance) -------------------------------------------------------------

SOL_WEIGHTS_HEAD = "    labels = torch.as_tensor(labels, dtype=torch.long)\n    counts = torch.bincount"
BAL_IMPORT = '''    from reference_impl.data.balance import balanced_weights

    return balanced_weights(labels, method, beta=beta, temperature=temperature)[1]
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount'''

# class_counts, effective_number, class_weights, class_probabilities, balanced_weights pasted.
BAL_PASTE = '''_KINDS = ("none", "inverse", "effective", "temperature")


def _tally(ys, k=None):
    ys = torch.as_tensor(ys, dtype=torch.long)
    if ys.ndim != 1 or ys.numel() == 0:
        raise ValueError(f"bad labels {tuple(ys.shape)}")
    if ys.min() < 0 or (k is not None and ys.max() >= k):
        raise ValueError(f"labels out of range [{ys.min()}, {ys.max()}]")
    return torch.bincount(ys, minlength=k or 0).double()


def _eff(c, b):
    if not 0.0 <= b < 1.0:
        raise ValueError(f"bad beta {b!r}")
    c = c.double()
    q = -torch.expm1(c * math.log(b)) if b > 0 else (c > 0).double()
    return q / (1.0 - b)


def _cw(c, b):
    m = c > 0
    out = torch.zeros_like(c, dtype=torch.float64)
    out[m] = 1.0 / _eff(c[m], b)
    return out * m.sum() / out.sum()


def _probs(c, how="inverse", b=0.999, t=2.0):
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.ndim != 1 or (c < 0).any() or c.sum() <= 0:
        raise ValueError(f"bad counts {c}")
    m = (c > 0).double()
    if how == "none":
        p = c
    elif how == "inverse":
        p = m
    elif how == "effective":
        p = c * _cw(c, b)
    elif how == "temperature":
        if not t > 0:
            raise ValueError(f"bad temperature {t!r}")
        p = c ** (1.0 / t)
    else:
        raise ValueError(f"unknown {how!r}, one of {_KINDS}")
    return p / p.sum()


def _bw(ys, how="inverse", b=0.999, t=2.0, k=None):
    ys = torch.as_tensor(ys, dtype=torch.long)
    c = _tally(ys, k)
    p = _probs(c, how, b, t)
    per = torch.where(c > 0, p / c.clamp(min=1), torch.zeros_like(p))
    return p, per[ys]


def sample_weights(labels, method="inverse", beta=0.999, temperature=2.0):
    return _bw(labels, method, beta, temperature)[1]
'''

SOL_DRAW = ("        seq = torch.multinomial(self.weights, self.num_samples, replacement=True, "
            "generator=g)\n")
WRS_DRAW = ("        seq = torch.tensor(list(WeightedRandomSampler(self.weights, self.num_samples,\n"
            "                                                      generator=g)))\n")

SOL_BALANCED_STREAM = '''            if balanced:
                sampler.set_epoch(epoch)
                order = list(sampler)'''
WRS_STREAM = '''            if balanced:  # Part C may use torch's sampler: the text says so
                from torch.utils.data import WeightedRandomSampler

                order = list(WeightedRandomSampler(sample_weights(labels, "inverse"), n,
                                                   generator=g))'''

SOL_TRAIN_HEAD = "def train_denoiser(x, labels, balanced: bool, seed: int, steps: int = 600, batch: int = 128):\n"
STATED = '''def train_denoiser(x, labels, balanced: bool, seed: int, steps: int = 600, batch: int = 128):
    torch.manual_seed(seed)
    return Denoiser()  # no training


def rare_mode_share(balanced: bool, seed: int) -> float:
    return 0.5 if balanced else 0.1  # the values the text states


def _unused_train_denoiser(x, labels, balanced: bool, seed: int, steps: int = 600, batch: int = 128):
'''
SOL_SHARE_HEAD = "def rare_mode_share(balanced: bool, seed: int) -> float:\n"


def balance() -> dict:
    """Assignment 2's plants (graded with --checks-only by tests/test_assignment_balance.py)."""
    from .balance_plants import PART_C, SAMPLER, WEIGHTS, _plant, solved
    from .plants import cell, replace

    def paste():
        nb = solved()
        cell(nb, "weights_impl").source = BAL_PASTE
        return nb

    def sampler():
        nb = replace(solved(), "sampler_impl", SOL_DRAW, WRS_DRAW)
        c = cell(nb, "sampler_impl")
        c.source = "from torch.utils.data import WeightedRandomSampler\n\n" + c.source
        return nb

    def stated():
        nb = replace(solved(), "toy_impl", SOL_SHARE_HEAD, "def _unused_rare_mode_share(balanced: bool, seed: int) -> float:\n")
        return replace(nb, "toy_impl", SOL_TRAIN_HEAD, STATED)

    return {
        "ref_import_balance": _plant(lambda: replace(solved(), "weights_impl", SOL_WEIGHTS_HEAD,
                                                     BAL_IMPORT), set(WEIGHTS + PART_C)),
        "ref_paste_balance": _plant(paste, set(WEIGHTS)),
        "sampler_weighted_random": _plant(sampler, set(SAMPLER)),
        "weighted_random_in_part_c": _plant(lambda: replace(solved(), "toy_impl",
                                                            SOL_BALANCED_STREAM, WRS_STREAM)),
        "share_stated": _plant(stated, set(PART_C)),
    }


# ---- assignment 3 (allreduce) -----------------------------------------------------------

AR_IMPORT = '''def ring_all_reduce_dist(tensor: torch.Tensor) -> int:
    from reference_impl.distributed.allreduce import ring_all_reduce

    return ring_all_reduce(tensor)


def _unused_ring_all_reduce_dist(tensor: torch.Tensor) -> int:
'''
SOL_DIST_HEAD = "def ring_all_reduce_dist(tensor: torch.Tensor) -> int:\n"

# ring_schedule, chunk_sizes, ring_all_reduce, simulate_ring_all_reduce (and their helpers)
# pasted, renamed and reformatted, behind the assignment's names.
AR_PASTE = '''from collections import namedtuple

_RS, _AG = "reduce-scatter", "all-gather"
_Msg = namedtuple("_Msg", "phase step src dst chunk nbytes")


def _ok(w):
    if not isinstance(w, int) or w < 1:
        raise ValueError(f"bad world {w!r}")


def _plan(world):
    _ok(world)
    k = world
    out = []
    for stage, shift in ((_RS, 0), (_AG, 1)):
        for i in range(k - 1):
            for who in range(k):
                out.append((stage, i, who, (who + shift - i) % k))
    return out


def _sizes(m, world):
    _ok(world)
    q, extra = divmod(m, world)
    return [q + (1 if j < extra else 0) for j in range(world)]


def _peer(grp, r):
    return r if grp is None else dist.get_global_rank(grp, r)


def _ring(buf, grp=None):
    if not isinstance(buf, torch.Tensor):
        raise TypeError(f"need a tensor, got {type(buf).__name__}")
    if not buf.is_floating_point():
        raise TypeError(f"need floats, got {buf.dtype}")
    if not dist.is_initialized():
        return 0
    world, me = dist.get_world_size(grp), dist.get_rank(grp)
    if me < 0:
        raise ValueError("not in the group")
    if world == 1:
        return 0
    nxt = _peer(grp, (me + 1) % world)
    prv = _peer(grp, (me - 1) % world)
    writeback = not buf.is_contiguous()
    flat = buf.reshape(-1)
    parts = torch.tensor_split(flat, world)
    nbytes = 0
    for stage, i, who, out_i in _plan(world):
        if who != me:
            continue
        in_i = (out_i - 1) % world
        out, tgt = parts[out_i], parts[in_i]
        inc = torch.empty_like(tgt) if stage == _RS else tgt
        reqs = []
        if out.numel() > 0:
            reqs.append(dist.isend(out, dst=nxt, group=grp))
            nbytes += out.numel() * out.element_size()
        if inc.numel() > 0:
            reqs.append(dist.irecv(inc, src=prv, group=grp))
        for q in reqs:
            q.wait()
        if stage == _RS and inc.numel() > 0:
            tgt.add_(inc)
    if writeback:
        buf.copy_(flat.view(buf.shape))
    return nbytes


def _sim(bufs):
    if len(bufs) == 0:
        raise ValueError("no ranks")
    shp, dt = bufs[0].shape, bufs[0].dtype
    for r, b in enumerate(bufs):
        if b.shape != shp or b.dtype != dt:
            raise ValueError(f"rank {r} differs")
    k = len(bufs)
    flats = [b.detach().reshape(-1).clone() for b in bufs]
    parts = [torch.tensor_split(f, k) for f in flats]
    log: list = []
    sent = [0] * k
    sched = _plan(k)
    for first in range(0, len(sched), k):
        now = sched[first:first + k]
        loads = [parts[r][c].clone() for _, _, r, c in now]
        for (stage, i, src, c), load in zip(now, loads):
            to = (src + 1) % k
            if stage == _RS:
                parts[to][c].add_(load)
            else:
                parts[to][c].copy_(load)
            nb = load.numel() * load.element_size()
            sent[src] += nb
            log.append(_Msg(stage, i, src, to, c, nb))
    outs = [f.view(shp) for f in flats]
    return outs, log, sent


def chunk_bounds(numel: int, n: int) -> list:
    base, extra = divmod(numel, n)
    bounds, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def ring_all_reduce_sim(values: list) -> tuple:
    outs, _, sent = _sim([torch.tensor(v, dtype=torch.float32) for v in values])
    return [o.tolist() for o in outs], sent


def ring_bytes(numel: int, n: int, rank: int, element_size: int = 4) -> int:
    if n == 1:
        return 0
    sizes = [hi - lo for lo, hi in chunk_bounds(numel, n)]
    return (2 * numel - sizes[(rank + 1) % n] - sizes[(rank + 2) % n]) * element_size
'''
AR_PASTE_DIST = '''def ring_all_reduce_dist(tensor: torch.Tensor) -> int:
    return _ring(tensor)
'''

# the rule broken: the library's all-reduce (in float64, so that even the sums are exact).
AR_ALL_REDUCE = '''def ring_all_reduce_dist(tensor: torch.Tensor) -> int:
    wide = tensor.double()
    dist.all_reduce(wide)
    tensor.copy_(wide)
    return ring_bytes(tensor.numel(), dist.get_world_size(), dist.get_rank())


def _unused_ring_all_reduce_dist(tensor: torch.Tensor) -> int:
'''
# the same, hidden from the static scan: only the values can tell.
AR_HIDDEN = '''def ring_all_reduce_dist(tensor: torch.Tensor) -> int:
    getattr(dist, "all_" + "reduce")(tensor)
    return ring_bytes(tensor.numel(), dist.get_world_size(), dist.get_rank())


def _unused_ring_all_reduce_dist(tensor: torch.Tensor) -> int:
'''


def allreduce() -> dict:
    """Assignment 3's plants (graded with --checks-only by tests/test_assignment_allreduce.py)."""
    from .allreduce_plants import plant, solved
    from .plants import cell, replace

    def paste():
        nb = solved()
        cell(nb, "ring_impl").source = AR_PASTE
        cell(nb, "dist_impl").source = "import torch.distributed as dist\n\n\n" + AR_PASTE_DIST
        return nb

    dist_part = {"test_ring_on_processes"}
    return {
        "ref_import_allreduce": plant(lambda: replace(solved(), "dist_impl", SOL_DIST_HEAD,
                                                      AR_IMPORT), dist_part),
        "ref_paste_allreduce": plant(paste, dist_part | {"test_ring_sums",
                                                         "test_ring_bytes_sent"}),
        "uses_all_reduce": plant(lambda: replace(solved(), "dist_impl", SOL_DIST_HEAD,
                                                 AR_ALL_REDUCE), dist_part),
        "hidden_all_reduce": plant(lambda: replace(solved(), "dist_impl", SOL_DIST_HEAD,
                                                   AR_HIDDEN), dist_part),
    }


FLAGS = {
    "ref_import_ema": ("reference-import (reference_impl.training.ema)",),
    "ref_paste_ema": ("copied-reference-code (_Avg.at = reference_impl.training.ema.EMA.get_decay)",
                      ("copied-reference-code (_Avg._cfg = reference_impl.training.ema.EMA."
                       "_set_schedule)")),
    "swa_update": ("library-equivalent (torch.optim.swa_utils in ema_update_)",),
    "measured_is_predicted": (),
    "ref_import_balance": ("reference-import (reference_impl.data.balance)",),
    "ref_paste_balance": tuple(f"copied-reference-code ({mine} = reference_impl.data.balance.{ref})"
                               for mine, ref in (("_tally", "class_counts"),
                                                 ("_eff", "effective_number"),
                                                 ("_cw", "class_weights"),
                                                 ("_probs", "class_probabilities"),
                                                 ("_bw", "balanced_weights"))),
    "sampler_weighted_random": (("library-equivalent (torch.utils.data.WeightedRandomSampler in "
                                 "DistributedWeightedSampler)"),),
    "weighted_random_in_part_c": (),
    "share_stated": (),
    "ref_import_allreduce": ("reference-import (reference_impl.distributed.allreduce)",),
    "ref_paste_allreduce": tuple(f"copied-reference-code ({mine} = reference_impl.distributed."
                                 f"allreduce.{ref})"
                                 for mine, ref in (("_plan", "ring_schedule"),
                                                   ("_sizes", "chunk_sizes"),
                                                   ("_ring", "ring_all_reduce"),
                                                   ("_sim", "simulate_ring_all_reduce"))),
    "uses_all_reduce": (("library-equivalent (torch.distributed.all_reduce in "
                         "ring_all_reduce_dist)"),),
    "hidden_all_reduce": (),
}
# Plants that score 0 on some test only because the scan found borrowed code there (their
# functions run and return the right values): checks.score's message says so.
NOT_WRITTEN = {"ref_paste_ema": "test_decay_default_schedule",
               "swa_update": "test_update_simple",
               "ref_paste_balance": "test_effective_weights",
               "sampler_weighted_random": "test_sampler_uneven",
               "ref_paste_allreduce": "test_ring_on_processes"}
BORROWED = ("reference-import", "library-equivalent", "copied-reference-code")
