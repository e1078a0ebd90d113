"""Model families: one module each (model class, forward strategy, scorer, temperature, costs).

A family is a :class:`Family` subclass registered with one line in :data:`ragr.registry.families`
(or :func:`register_family` for one defined at run time, e.g. in a test or a user's script).
Objectives (:mod:`ragr.train.objectives`) consume what a family ``produces``; see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from ragr.families.base import OUTPUTS, Family, get_family, register_family

__all__ = ["OUTPUTS", "Family", "get_family", "register_family"]
