r"""Exact noisy detection statistics of a :class:`~pqt.circuits.photonic.PhotonicQNN`, in closed form.

The physics is Perceval's (``NoiseModel`` -> ``Source.from_noise_model``, threshold detectors), the
method is not: instead of simulating every annotated source state with SLOS, each N-click pattern's
probability is a signed sum of 2^N permanents of N x N matrices. Perceval's noisy simulation stays the
reference (``backends.noisy``, tests to 1e-10) and the fallback for what is not covered here (more than
8 photons, Perceval's pruned simulation).

Derivation
----------
**Source** (Perceval's model; ``test_photonic_noise`` checks it against ``Source.probability_distribution``).
Every input mode k of the N photon-carrying modes gets an independent copy of the source. With
brightness b, g2, indistinguishability I and transmittance eta (Perceval applies the system-wide loss
at the source):

- the source emits two photons with p2 = (1 - b g2 - sqrt(1 - 2 b g2)) / g2 (the root of
  g2 = 2 p2 / (p1 + 2 p2)^2 with p1 + p2 = b; p2 = 0 when g2 = 0), one with p1 = b - p2, none with 1 - b;
- every photon survives independently with probability eta;
- the main photon is in the common ("indistinguishable") wavepacket with probability s = sqrt(I), so two
  photons overlap with probability I (the HOM visibility); otherwise it is in a wavepacket of its own;
- the extra photon of a two-photon emission is always in a wavepacket of its own (Perceval's default
  ``g2_distinguishable``).

So mode k holds, with the probabilities of :meth:`SourceNoise.mode_mixture`: nothing (pi_0); one
common-wavepacket photon (pi_a); one photon of its own wavepacket (pi_d: a main photon with 1 - s, or an
extra photon whose partner was lost); a common-wavepacket photon and an extra one (pi_ae); two photons of
their own wavepackets (pi_de).

**Propagation.** Photons in orthogonal wavepackets do not interfere. Given which modes carry what, the
set A of inputs holding a common-wavepacket photon evolves as |A| indistinguishable bosons through U, and
every other photon independently as a classical particle: from input k to output j with |U_jk|^2.

**Threshold detection.** A detector clicks when at least one photon reaches it; the click set C is the set
of occupied output modes. For a set T of output modes let F(T) = P(every photon ends in T) = P(C is a
subset of T). Moebius inversion on the lattice of subsets gives, for a pattern S,

    P(C = S) = sum over T subset of S of (-1)^{|S| - |T|} F(T).

**F(T) for one source configuration.** Let G_T = U[T, :]^dagger U[T, :] (N x N, U the M x N columns of the
input modes) and g_k = (G_T)_kk = sum_{j in T} |U_jk|^2. The probability that the bosons of A all land in
T is <psi| Pi_T |psi> = Perm(G_T[A, A]) (Pi_T projects every creation operator onto the modes T; the norm
of a product of creation operators is the permanent of their Gram matrix). A photon of its own wavepacket
from input k lands in T with probability g_k. So F(T | config) = Perm(G_T[A, A]) prod_{own photons} g_k.

**Average over the source.** Modes are independent, so

    F(T) = sum over A of Perm(G_T[A, A]) prod_{k in A} alpha_k prod_{k not in A} beta_k,
    alpha_k = pi_a + pi_ae g_k,   beta_k = pi_0 + pi_d g_k + pi_de g_k^2.

For a diagonal D, Perm(D + B) = sum over A of Perm(B[A, A]) prod_{k not in A} D_kk (expand every row of the
permanent into its D and its B part: D only contributes fixed points). With B = G_T diag(alpha),
Perm(B[A, A]) = Perm(G_T[A, A]) prod_{k in A} alpha_k, hence

    F(T) = Perm(diag(beta) + G_T diag(alpha)),

one N x N permanent per subset T (Glynn's formula, as the ideal path). The N-click patterns need every T
with |T| <= N: sum_t C(M, t) permanents (256 for 9 modes / 4 photons), the signed sums one fixed matrix
product. F(empty) = pi_0^N, so P(at least one click) = 1 - pi_0^N. Without noise (alpha = 1, beta = 0)
F(T) = Perm(G_T) and P(C = S) = |Perm(U[S, :])|^2, the ideal collision-free probability.

Phase noise only changes the unitary (see ``backends.noisy``). Everything here works on numpy arrays and,
unchanged, on torch tensors, so the post-selected noisy distribution is differentiable in the phases
(joint training under distinguishability, loss, brightness and g2).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pqt.circuits.photonic import PhotonicQNN

# 2^(N-1) permanent terms per subset, times sum_t C(M, t) subsets: beyond this many photons Perceval is used.
MAX_FAST_PHOTONS = 8


@dataclass(frozen=True)
class ModeMixture:
    """What one input mode holds after the source and the losses (probabilities, summing to 1)."""

    vacuum: float  # pi_0
    common: float  # pi_a: one photon in the common wavepacket
    own: float  # pi_d: one photon in a wavepacket of its own
    common_and_extra: float  # pi_ae: a common-wavepacket photon and a distinguishable extra one
    own_and_extra: float  # pi_de: two photons, each in a wavepacket of its own


@dataclass(frozen=True)
class SourceNoise:
    """Perceval's source and loss parameters (``NoiseModel`` names); the defaults are ideal."""

    brightness: float = 1.0
    transmittance: float = 1.0
    indistinguishability: float = 1.0
    g2: float = 0.0

    def mode_mixture(self) -> ModeMixture:
        """The content of one input mode (see the module docstring for the model)."""
        b, eta, g2 = self.brightness, self.transmittance, self.g2
        p2 = (1.0 - b * g2 - math.sqrt(1.0 - 2.0 * b * g2)) / g2 if g2 else 0.0
        p1 = b - p2
        s = math.sqrt(self.indistinguishability)
        main_alone = eta * p1 + eta * (1.0 - eta) * p2  # one photon left, the main one
        extra_alone = eta * (1.0 - eta) * p2  # one photon left, the extra one
        both = eta * eta * p2
        return ModeMixture(
            vacuum=(1.0 - b) + (1.0 - eta) * p1 + (1.0 - eta) ** 2 * p2,
            common=s * main_alone,
            own=(1.0 - s) * main_alone + extra_alone,
            common_and_extra=s * both,
            own_and_extra=(1.0 - s) * both,
        )


class ThresholdClicks:
    """Exact click statistics of one QNN's N-click patterns for any :class:`ModeMixture`.

    Built once per QNN (the subset tables); :meth:`probabilities` works on numpy or torch columns.
    """

    def __init__(self, qnn: PhotonicQNN) -> None:
        if qnn.photons > MAX_FAST_PHOTONS:
            raise ValueError(f"the closed form is used up to {MAX_FAST_PHOTONS} photons (got {qnn.photons})")
        self.qnn = qnn
        m, n = qnn.modes, qnn.photons
        subsets = [t for size in range(n + 1) for t in itertools.combinations(range(m), size)]
        position = {t: i for i, t in enumerate(subsets)}
        # indicator[i, j] = 1 when output mode j is in subset i: G_T for every T by one matmul.
        self.indicator = np.zeros((len(subsets), m))
        for i, t in enumerate(subsets):
            self.indicator[i, list(t)] = 1.0
        # moebius[s, i] = (-1)^{N - |T_i|} when T_i is a subset of pattern s (qnn.outcomes order).
        self.moebius = np.zeros((qnn.n_outcomes, len(subsets)))
        for s, pattern in enumerate(qnn.output_modes):
            for size in range(n + 1):
                for t in itertools.combinations(pattern.tolist(), size):
                    self.moebius[s, position[t]] = (-1.0) ** (n - size)
        self.diagonal = np.arange(n) * (n + 1)  # flat indices of an N x N matrix's diagonal
        self._numpy = (self.indicator.astype(np.complex128), self.moebius, self.diagonal)
        self._torch: dict[str, tuple[Any, Any, Any]] = {}

    @property
    def n_subsets(self) -> int:
        return self.indicator.shape[0]

    def probabilities(self, columns: Any, mixture: ModeMixture, xp: Any = np) -> Any:
        """P(click set = S) for every N-click pattern S, per source pulse (not normalised).

        ``columns``: U[:, input modes] (M x N), numpy or a complex128 torch tensor (``xp=torch``).
        """
        m, n = columns.shape
        # Row j's outer product conj(U_j)^T U_j, flattened: G_T = sum_{j in T} of them.
        outer = (columns.conj()[:, :, None] * columns[:, None, :]).reshape(m, n * n)
        indicator, moebius, diagonal = self._tables(columns, xp)
        gram = (indicator @ outer).reshape(-1, n, n)
        g = gram.reshape(-1, n * n)[:, diagonal].real
        alpha = mixture.common + mixture.common_and_extra * g
        beta = mixture.vacuum + (mixture.own + mixture.own_and_extra * g) * g
        matrices = gram * alpha[:, None, :]  # G_T diag(alpha)
        flat = matrices.reshape(-1, n * n)
        if xp is np:
            flat[:, diagonal] += beta
        else:  # out of place: differentiable
            flat = flat.index_add(1, diagonal, beta.to(flat.dtype))
        f = self.qnn.permanents(flat.reshape(-1, n, n), xp).real  # F(T) for every subset T
        return moebius @ f

    def _tables(self, columns: Any, xp: Any) -> tuple[Any, Any, Any]:
        """(subset indicator, Moebius signs, diagonal indices) as numpy arrays or torch tensors."""
        if xp is np:
            return self._numpy
        key = str(columns.device)
        if key not in self._torch:
            import torch

            device = columns.device
            self._torch[key] = (torch.as_tensor(self.indicator, dtype=torch.complex128, device=device),
                                torch.as_tensor(self.moebius, dtype=torch.float64, device=device),
                                torch.as_tensor(self.diagonal, device=device))
        return self._torch[key]


def any_click_probability(mixture: ModeMixture, photons: int) -> float:
    """P(at least one click) per source pulse: every photon that reaches the detectors is detected."""
    return 1.0 - mixture.vacuum**photons
