"""Photonic Quantum-Enhanced Knowledge Distillation (PQKD, arXiv 2603.14898; our reading of its abstract).

A photonic circuit's shot-limited output distribution, EMA-smoothed, is the conditioning signal phi of
a small student whose convolutions are dictionary convolutions (a few shared basis filters per layer,
mixed by coefficients A_l phi through fixed random transforms A_l); the student distils a classical
teacher. Training is the one loop of :mod:`pqt.training.trainer`: Adam on the student, then a
gradient-free update of the phases. The deployed student is a plain network (kernels fixed from the
final phi) that runs without quantum software.

Modules: :mod:`.config` (settings), :mod:`.teacher` (training and caching the teacher),
:mod:`.student` (dictionary convolutions), :mod:`.features` (phi and its EMA), :mod:`.method` (the
loss, the objective, deployment, accounting). The plain networks (teachers, the deployed student) are
registered targets in :mod:`pqt.targets`.
"""
