"""Iterative magnitude pruning with rewinding: lottery tickets, as a sparse training method.

Frankle & Carbin 2019, "The Lottery Ticket Hypothesis"; rewinding to step k instead of
step 0: Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis".

A dense run of ``steps`` updates, then R rounds. Round r:

1. prune: each chosen layer keeps its ``layer_nnz(…, s_r)`` largest trained weights (among
   those still stored), with ``s_r = 1 − (1 − s)^(r/R)`` (each round removes the same fraction
   of what is left; round R reaches s);
2. rewind: the whole training state — weights, optimizer state, step, random streams — goes
   back to step k = round(rewind · steps) of the dense run, restricted to the survivors;
3. retrain to ``steps``.

The control of the paper (``control="reinit"``) trains the *ticket's* pattern of round r from
fresh random weights at step 0. That pattern is pruned from the ticket's weights of round
r − 1, not from the control's own: so round r < R also trains the ticket of round r (rewound,
as above, without metrics or checkpoints), whose weights give round r + 1 its pattern.

The method is driven by the training loop's hooks (`refsparse.prune.methods`):
`IMP.start_step` keeps the state of step k, `IMP.end_of_run` prunes, rewinds
and asks for another run until the last round.
"""

from __future__ import annotations

import numpy as np

from ..kernels.select import topk_indices
from .methods import SparseMethod, csr_positions, sparsify_with_positions
from .sparsify import prunable_layers

__all__ = ["IMP"]


class IMP(SparseMethod):
    """Lottery tickets: prune the trained weights by magnitude, rewind the survivors, retrain.

    Parameters
    ----------
    sparsity : float in [0, 1)
        The sparsity of the last round.
    steps : int
        Updates of each run (the dense one and every round).
    rounds : int >= 1
        R, the pruning rounds after the dense run.
    rewind : float in [0, 1)
        k = round(rewind · steps): the step the survivors go back to (0: their initial values).
    control : "rewind" | "reinit"
        The ticket, or the paper's random re-initialisation control.
    init_seed : int
        The run's seed: the control's fresh weights of round r come from ``init_seed + 7919 r``.
    """

    name = "imp"

    def __init__(self, sparsity, *, steps, rounds, rewind, control="rewind", init_seed=0, **kw):
        super().__init__(sparsity, **kw)
        for k, v in (("steps", steps), ("rounds", rounds)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{k}: expected a positive integer, got {v!r}")
        if control not in ("rewind", "reinit"):
            raise ValueError(f"control: expected 'rewind' or 'reinit', got {control!r}")
        k = round(float(rewind) * steps)
        if not 0 <= k < steps:
            raise ValueError(f"rewind: expected a step k = round(rewind · steps) in [0, steps={steps}), "
                             f"got {rewind!r} (k = {k})")
        self.steps, self.rounds, self.rewind_step = int(steps), int(rounds), k
        self.control, self.init_seed = control, int(init_seed)
        self.round = 0  # 0: the dense run
        self.snapshot = None  # the training state at step k of the dense run (run.capture())
        self.ticket = None  # reinit control: the ticket's trained weights of the last round

    def round_sparsity(self, r):
        """The sparsity after pruning round r of R: ``1 − (1 − s)^(r/R)``."""
        return self.sparsity if r == self.rounds else 1.0 - (1.0 - self.sparsity) ** (r / self.rounds)

    def log_fields(self):
        """Each metrics record says which round it belongs to."""
        return {"round": self.round}

    def start_step(self, run):
        """Keep a copy of the whole training state at step k of the dense run."""
        if self.snapshot is None and run.step == self.rewind_step:
            self.snapshot = run.capture()

    def positions(self, weights, model, target):
        """The flat positions each prunable layer keeps at sparsity ``target``: its
        ``layer_nnz`` largest weights by magnitude (among those stored) of ``weights``
        ({"<layer>.weight": ndarray or CSR}); ``model`` gives the layers."""
        counts = self._plan(model, target)
        keep = {}
        for name, _ in prunable_layers(model):
            w = weights[f"{name}.weight"]
            if hasattr(w, "nnz"):
                keep[name] = csr_positions(w)[topk_indices(np.abs(w.data), counts[name])]
            else:
                keep[name] = topk_indices(np.abs(w).reshape(-1), counts[name])
        return keep

    @staticmethod
    def _weights(model):
        return {f"{n}.weight": lin.weight.value.copy() for n, lin in prunable_layers(model)}

    @staticmethod
    def _apply(run, keep):
        for name, positions in keep.items():
            sparsify_with_positions(run.model, name, positions, run.opt)

    def end_of_run(self, run):
        """After a run: prune, rewind and return True for the next round; False after round R."""
        if self.round >= self.rounds or self.sparsity == 0:
            return False
        if self.snapshot is None:
            raise RuntimeError(f"IMP: no state of step {self.rewind_step} was kept; drive the method "
                               "with start_step(run) before each step")
        r = self.round + 1
        target = self.round_sparsity(r)
        if self.control == "rewind":
            keep = self.positions(self._weights(run.model), run.model, target)
            run.restore(self.snapshot)
            self._apply(run, keep)
        else:
            # round 1: the dense run, shared by the ticket and the control, is run.model
            ticket = self._weights(run.model) if r == 1 else self.ticket
            keep = self.positions(ticket, run.model, target)
            if r < self.rounds:  # train the ticket of round r: it picks round r + 1's pattern
                run.restore(self.snapshot)
                self._apply(run, keep)
                while run.step < self.steps:
                    run.train_step()
                self.ticket = self._weights(run.model)
            else:
                self.ticket = None
            run.reset(self.init_seed + 7919 * r)  # fresh random weights at step 0
            self._apply(run, keep)
        self.round = r
        return True

    # -- state: what a checkpoint keeps -------------------------------------------------
    def state_dict(self):
        """The random stream, the round, the rewind state and (reinit control) the ticket."""
        return {**super().state_dict(), "round": self.round, "snapshot": self.snapshot,
                "ticket": self.ticket}

    def load_state_dict(self, state):
        """Restore what `state_dict` returned."""
        super().load_state_dict(state)
        self.round = int(state["round"])
        self.snapshot = state.get("snapshot")
        self.ticket = state.get("ticket")

    def __repr__(self):
        return (f"IMP(sparsity={self.sparsity}, rounds={self.rounds}, rewind_step={self.rewind_step}, "
                f"control={self.control!r})")
