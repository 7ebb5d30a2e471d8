"""Photonic QNNs: Perceval ``GenericInterferometer`` meshes and their output distributions.

A :class:`PhotonicQNN` is a rectangular (Clements) mesh of Mach-Zehnder interferometers over
M modes fed with N single photons. Its output is the distribution over the C(M, N)
collision-free patterns, the events in which N threshold detectors click.

Outcome order (documented contract): the patterns are the N-subsets of the modes in
``itertools.combinations`` order, so the first one is |1,1,...,1,0,...,0> and the last one
|0,...,0,1,...,1>. This is the paper's order.

How it is evaluated: the circuit stays the Perceval object (``qnn.circuit``), and its phase
parameters are the Perceval parameters in ``circuit.get_parameters()`` order. For speed the
unitary columns that the input photons see are built directly from those phases: every MZI
layer is one block-diagonal matrix, all built with one scatter and chained by small matmuls
(checked against ``circuit.compute_unitary()`` in the tests), and the collision-free
probabilities are the squared permanents |Perm(U[S, inputs])|^2 of the N x N submatrices
(Glynn's formula). Large photon numbers fall back to Perceval's SLOS fed with that unitary.
``perceval_distribution`` is the straightforward Perceval path (Processor + Sampler), kept as
the reference the tests and ``pqt bench`` compare against.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import perceval as pcvl

from pqt.circuits.base import Circuit, sample_frequencies
from pqt.errors import UserError
from pqt.interrupts import restore_sigint

__all__ = ["PhotonicQNN", "perceval_distribution", "sample_frequencies"]


# Importing exqalibur (above, through perceval) replaces Python's SIGINT handler: put it back.
restore_sigint()

# Above this many photons the 2^(N-1) terms per pattern lose to Perceval's SLOS.
_MAX_PERMANENT_PHOTONS = 8


def mzi(index: int) -> pcvl.Circuit:
    """One Mach-Zehnder interferometer: BS, internal phase, BS, external phase (top mode)."""
    return (
        pcvl.BS()
        // (0, pcvl.PS(pcvl.P(f"phi_{index:03d}_a")))
        // pcvl.BS()
        // (0, pcvl.PS(pcvl.P(f"phi_{index:03d}_b")))
    )


def default_input_modes(modes: int, photons: int) -> tuple[int, ...]:
    """The paper's input: one photon in each of ``int(linspace(0, M-1, N))``."""
    return tuple(int(v) for v in np.linspace(0, modes - 1, photons))


@dataclass(frozen=True)
class _MeshPlan:
    """Where every MZI's 2x2 block sits in the M x M matrix of its layer.

    MZIs of one layer act on disjoint mode pairs, so a layer is one block-diagonal matrix and the
    mesh is the product of ``n_layers`` of them: building all of them with one scatter and chaining
    them with small matmuls is a few dozen array operations, for numpy and torch (autograd) alike.
    """

    modes: int
    n_layers: int
    phase_a: np.ndarray  # (n_mzi,) index into the phase vector of each MZI's internal phase
    phase_b: np.ndarray  # ... and of its external phase
    block_index: np.ndarray  # (4 * n_mzi,) flat index in (n_layers, M, M) of t00, t01, t10, t11
    identity_index: np.ndarray  # flat indices of the diagonal entries no MZI touches (value 1)


def _mesh_plan(circuit: pcvl.Circuit, param_index: dict[str, int]) -> _MeshPlan:
    """Read the flattened circuit back into MZI layers (BS, PS, BS, PS on each mode pair)."""
    # Barriers only align the drawing; they act as the identity.
    components = [(r, c) for r, c in circuit if not isinstance(c, pcvl.components.Barrier)]
    if len(components) % 4:
        raise ValueError("interferometer is not made of MZIs (BS, PS, BS, PS)")
    m = circuit.m
    depth = [0] * m
    mzis: list[tuple[int, int, int, int]] = []  # (layer, top, phase a, phase b)
    for i in range(0, len(components), 4):
        (r0, bs0), (r1, ps_a), (r2, bs1), (r3, ps_b) = components[i : i + 4]
        top = r0[0]
        if not (
            isinstance(bs0, pcvl.BS) and isinstance(bs1, pcvl.BS)
            and isinstance(ps_a, pcvl.PS) and isinstance(ps_b, pcvl.PS)
            and tuple(r0) == tuple(r2) == (top, top + 1) and tuple(r1) == tuple(r3) == (top,)
        ):
            raise ValueError("interferometer is not made of MZIs (BS, PS, BS, PS)")
        layer = max(depth[top], depth[top + 1])
        depth[top] = depth[top + 1] = layer + 1
        mzis.append((layer, top, param_index[ps_a.get_parameters()[0].name],
                     param_index[ps_b.get_parameters()[0].name]))
    n_layers = max(depth) if mzis else 0
    layer, top, pa, pb = (np.array(v, dtype=np.int64) for v in zip(*mzis, strict=True))
    base = layer * m * m
    block_index = np.concatenate([base + top * m + top, base + top * m + top + 1,
                                  base + (top + 1) * m + top, base + (top + 1) * m + top + 1])
    diagonal = {(k, i) for k in range(n_layers) for i in range(m)}
    diagonal -= {(k, t + d) for k, t in zip(layer, top, strict=True) for d in (0, 1)}
    identity_index = np.array(sorted(k * m * m + i * m + i for k, i in diagonal), dtype=np.int64)
    return _MeshPlan(m, n_layers, pa, pb, block_index, identity_index)


class PhotonicQNN(Circuit):
    """An M-mode, N-photon universal interferometer whose phases are trainable.

    >>> qnn = PhotonicQNN(modes=9, photons=4)
    >>> qnn.n_parameters, len(qnn.outcomes)
    (72, 126)
    """

    kind = "photonic"

    def __init__(self, modes: int, photons: int, input_modes: tuple[int, ...] | None = None) -> None:
        if photons < 1 or modes < 2:
            raise UserError(f"a photonic QNN needs at least 2 modes and 1 photon (got {modes} modes, "
                            f"{photons} photons)")
        if photons > modes:
            raise UserError(f"{photons} photons do not fit in {modes} modes collision-free: "
                            f"use at most {modes} photons or at least {photons} modes")
        if input_modes is None:
            input_modes = default_input_modes(modes, photons)
        input_modes = tuple(int(k) for k in input_modes)
        if len(input_modes) != photons or len(set(input_modes)) != photons or not all(
            0 <= k < modes for k in input_modes
        ):
            raise UserError(f"input modes {input_modes} must be {photons} distinct modes in 0..{modes - 1}")
        self.modes = modes
        self.photons = photons
        self.input_modes = input_modes
        self.circuit = pcvl.GenericInterferometer(modes, mzi, shape=pcvl.InterferometerShape.RECTANGLE)
        self.parameters = self.circuit.get_parameters()
        self.parameter_names = [p.name for p in self.parameters]
        occupation = [0] * modes
        for k in input_modes:
            occupation[k] = 1
        self.input_state = pcvl.BasicState(occupation)
        self._plan = _mesh_plan(self.circuit, {n: i for i, n in enumerate(self.parameter_names)})
        # Output patterns: N-subsets of modes in combinations order (see module docstring).
        self.output_modes = np.array(list(itertools.combinations(range(modes), photons)), dtype=np.int64)
        self._torch_cache: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"PhotonicQNN(modes={self.modes}, photons={self.photons}, input_modes={self.input_modes})"

    @property
    def n_parameters(self) -> int:
        return len(self.parameters)

    @property
    def n_outcomes(self) -> int:
        return math.comb(self.modes, self.photons)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "modes": self.modes, "photons": self.photons,
                "input_modes": list(self.input_modes), "parameters": self.n_parameters,
                "outcomes": self.n_outcomes}

    @cached_property
    def outcomes(self) -> list[tuple[int, ...]]:
        """Occupation tuples of the collision-free patterns, in distribution order."""
        patterns = []
        for subset in self.output_modes:
            occ = [0] * self.modes
            for k in subset:
                occ[k] = 1
            patterns.append(tuple(occ))
        return patterns

    @cached_property
    def _permanent_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Constants of Glynn's formula for every pattern's N x N submatrix.

        Perm(A) = 2^-(N-1) sum over d in {+-1}^N with d_1 = 1 of (prod_k d_k) prod_i sum_j d_j A_ij:
        2^(N-1) dense terms (32 for 6 photons; Ryser's formula needs 2^N) instead of N! gathered
        products. The row sums of all patterns are ONE (K*N, N) @ (N, 2^(N-1)) GEMM, since every
        pattern shares the sign table; then a product over rows and a dot with the signs.
        """
        n = self.photons
        deltas = np.array([(1.0, *rest) for rest in itertools.product((1.0, -1.0), repeat=n - 1)])  # (T, N)
        signs = deltas.prod(1) / 2.0 ** (n - 1)
        # flat index of U[S_k[i], j] in the (M x N) columns, for pattern k, row i, column j
        gather = (self.output_modes[:, :, None] * n + np.arange(n)[None, None, :]).reshape(-1)
        return gather, deltas.T.astype(np.complex128), signs

    # ---- unitary -------------------------------------------------------------------------------
    def _layer_matrices(self, phases: Any, xp: Any) -> Any:
        """(..., n_layers, M, M) block-diagonal layer matrices; ``xp`` is numpy or torch.

        torch takes a batch of phase settings (..., P): one layer stack per setting.
        """
        plan = self._plan
        ea = xp.exp(1j * phases[..., plan.phase_a])
        eb = xp.exp(1j * phases[..., plan.phase_b])
        # MZI = PS(b) . BS . PS(a) . BS with Perceval's BS (Rx convention):
        # [[eb (ea - 1), i eb (ea + 1)], [i (ea + 1), 1 - ea]] / 2
        parts = [0.5 * eb * (ea - 1), 0.5j * eb * (ea + 1), 0.5j * (ea + 1), 0.5 * (1 - ea)]
        shape = (plan.n_layers, plan.modes, plan.modes)
        if xp is np:
            flat = np.zeros(plan.n_layers * plan.modes * plan.modes, dtype=np.complex128)
            flat[plan.identity_index] = 1.0
            flat[plan.block_index] = np.concatenate(parts)
            return flat.reshape(shape)
        block_index, identity = self._torch_constants(phases.device)
        batch = phases.shape[:-1]
        flat = identity.expand(*batch, -1).clone()
        flat[..., block_index] = xp.cat(parts, -1)  # into a fresh tensor: differentiable
        return flat.reshape(*batch, *shape)

    def _torch_constants(self, device: Any) -> tuple[Any, Any]:
        import torch

        key = ("mesh", str(device))
        if key not in self._torch_cache:
            plan = self._plan
            identity = torch.zeros(plan.n_layers * plan.modes * plan.modes, dtype=torch.complex128, device=device)
            identity[torch.as_tensor(plan.identity_index, device=device)] = 1.0
            self._torch_cache[key] = (torch.as_tensor(plan.block_index, device=device), identity)
        return self._torch_cache[key]

    def _propagate(self, phases: Any, columns: Any, xp: Any) -> Any:
        """Apply the mesh to ``columns`` (M x k): the layer matrices, first layer first (batched in torch)."""
        layers = self._layer_matrices(phases, xp)
        for layer in (layers if xp is np else layers.unbind(-3)):  # unbind: see collision_free_probabilities
            columns = layer @ columns
        return columns

    def unitary(self, phases: Any) -> np.ndarray:
        """The full M x M unitary of the mesh for ``phases`` (equals ``circuit.compute_unitary()``)."""
        phases = np.asarray(phases, dtype=np.float64)
        self.check_parameters(phases)
        return self._propagate(phases, np.eye(self.modes, dtype=np.complex128), np)

    def input_columns(self, phases: Any) -> np.ndarray:
        """U[:, input_modes]: the only part of the unitary the photons see (M x N)."""
        phases = np.asarray(phases, dtype=np.float64)
        self.check_parameters(phases)
        start = np.eye(self.modes, dtype=np.complex128)[:, list(self.input_modes)]
        return self._propagate(phases, start, np)

    # ---- distributions -------------------------------------------------------------------------
    def collision_free_probabilities(self, columns: Any, xp: Any = np) -> Any:
        """Unnormalised |Perm(U[S, inputs])|^2 for every pattern S, from the M x N columns."""
        gather, deltas, signs = self._permanent_tables if xp is np else self._torch_permanent(columns.device)
        n, batch = self.photons, columns.shape[:-2]
        rows = columns.reshape(*batch, -1)[..., gather].reshape(*batch, -1, n)  # (..., K*N, N): U[S_k[i], j]
        sums = (rows @ deltas).reshape(*batch, -1, n, deltas.shape[1])
        perm = _row_products(sums, xp) @ signs
        return perm.real**2 + perm.imag**2

    def permanents(self, matrices: Any, xp: Any = np) -> Any:
        """Permanents of a stack of N x N complex matrices (..., N, N) by Glynn's formula, numpy or torch."""
        _, deltas, signs = self._permanent_tables if xp is np else self._torch_permanent(matrices.device)
        return _row_products(matrices @ deltas, xp) @ signs

    def _torch_permanent(self, device: Any) -> tuple[Any, Any, Any]:
        import torch

        key = ("permanent", str(device))
        if key not in self._torch_cache:
            gather, deltas, signs = self._permanent_tables
            self._torch_cache[key] = (torch.as_tensor(gather, device=device),
                                      torch.as_tensor(deltas, dtype=torch.complex128, device=device),
                                      torch.as_tensor(signs, dtype=torch.complex128, device=device))
        return self._torch_cache[key]

    def exact_distribution(self, phases: Any) -> np.ndarray:
        """Exact collision-free distribution (sums to 1) over :attr:`outcomes`."""
        columns = self.input_columns(phases)
        if self.photons <= _MAX_PERMANENT_PHOTONS:
            probs = self.collision_free_probabilities(columns)
        else:
            probs = self._slos_probabilities(phases)
        return probs / probs.sum()

    def _slos_probabilities(self, phases: Any) -> np.ndarray:
        """Perceval's SLOS fed with the vectorised unitary (for many photons)."""
        backend = pcvl.BackendFactory.get_backend("SLOS")
        backend.set_circuit(pcvl.Unitary(pcvl.Matrix(self.unitary(phases))))
        backend.set_input_state(self.input_state)
        dist = backend.prob_distribution()
        return np.array([dist.get(pcvl.BasicState(list(o)), 0.0) for o in self.outcomes])

    # ---- torch (differentiable) ----------------------------------------------------------------
    def torch_input_columns(self, phases: Any) -> Any:
        """:meth:`input_columns` from a float64 torch tensor of phases (or a batch (B, P)), differentiable."""
        import torch

        start = torch.eye(self.modes, dtype=torch.complex128, device=phases.device)[:, list(self.input_modes)]
        return self._propagate(phases, start, torch)

    def torch_distribution(self, phases: Any) -> Any:
        """Differentiable exact distribution: ``phases`` a float64 torch tensor (grad allowed).

        ``phases`` may be a batch (B, P) of settings: the result is then (B, K), all computed together
        (one set of batched matrix products instead of B passes).
        """
        import torch

        probs = self.collision_free_probabilities(self.torch_input_columns(phases), xp=torch)
        return probs / probs.sum(-1, keepdim=True)



def _row_products(sums: Any, xp: Any) -> Any:
    """Product over the rows axis (-2) of Glynn's row sums (..., N, T) -> (..., T)."""
    if xp is np:
        return sums.prod(-2)
    # torch's prod backward (zero checks, copies) costs more than the forward; N products do not
    first, *others = sums.unbind(-2)  # unbind: one backward node, not a zero-filled gradient per row
    products = first
    for row in others:
        products = products * row
    return products


def perceval_distribution(qnn: PhotonicQNN, phases: Any) -> np.ndarray:
    """The straightforward Perceval path: ``Processor("SLOS")`` + ``Sampler.probs()``.

    Restricted to the collision-free patterns and renormalised. Slow; the reference.
    """
    from perceval.algorithm import Sampler
    from perceval.runtime.legacy import Processor

    for p, v in zip(qnn.parameters, np.asarray(phases, dtype=np.float64), strict=True):
        p.set_value(float(v))
    processor = Processor("SLOS", qnn.circuit)
    processor.with_input(qnn.input_state)
    processor.min_detected_photons_filter(qnn.photons)
    results = Sampler(processor).probs()["results"]
    probs = np.array([results.get(pcvl.BasicState(list(o)), 0.0) for o in qnn.outcomes])
    return probs / probs.sum()
