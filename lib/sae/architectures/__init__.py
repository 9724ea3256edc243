"""The SAE architectures, one module each, and their registry by name.

==================  ===========================================================================
module              concept
==================  ===========================================================================
``spec``            what an architecture declares: :class:`ArchitectureSpec`, the base class
``topk``            TopK: its activation, SAELens fields, MSE + AuxK and the sparse (CSR) step
``jumprelu``        the study's JumpReLU (threshold fixed at 0, L1): a ReLU SAE, the dense step
``jumprelu_ste``    JumpReLU with a learned threshold: the STE, its kernel and L0 penalty
==================  ===========================================================================

:data:`REGISTRY` maps a name to its spec; the model (:mod:`lib.sae.model`), the SAELens export
and loading, and the trainer's step (:mod:`lib.sae.fused_step`) look the architecture up here
and branch on nothing else. Adding an architecture is one module (a subclass of
:class:`ArchitectureSpec` and its ``SPEC``) and one line, ``register(SPEC)``, below (or in a
test, with :func:`unregister` after it). The book's configs and SAE ids still allow only the
three of :data:`lib.core.vocabulary.ARCHITECTURES`, which are the ones registered here.
"""

from __future__ import annotations

from lib.sae.architectures import jumprelu, jumprelu_ste, topk
from lib.sae.architectures.spec import ArchitectureSpec

#: architecture name -> its spec
REGISTRY: dict[str, ArchitectureSpec] = {}


def register(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Add ``spec`` under ``spec.name``; a ValueError for a clash with a registered one."""
    if not spec.name or not spec.saelens_name:
        raise ValueError(f"{spec!r}: an architecture needs a name and a SAELens name")
    if spec.name in REGISTRY:
        raise ValueError(f"SAE architecture {spec.name!r} is already registered")
    if spec.saelens_name not in spec.reads:
        raise ValueError(f"{spec!r} must read the SAELens architecture it writes")
    claimed = {sl: s.name for s in REGISTRY.values() for sl in s.default_for}
    taken = [sl for sl in spec.default_for if sl in claimed]
    if taken:
        raise ValueError(
            f"{spec!r}: SAELens {taken} already load as {[claimed[t] for t in taken]} by default"
        )
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove the architecture ``name`` (a test's own, after the test)."""
    del REGISTRY[name]


def get_spec(name: str) -> ArchitectureSpec:
    """The spec of architecture ``name``; a ValueError listing the registered ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"architecture={name!r}; allowed: {list(REGISTRY)}") from None


def saelens_readable() -> list[str]:
    """The SAELens architectures some registered architecture loads."""
    return sorted({sl for s in REGISTRY.values() for sl in s.reads})


def default_for_saelens(saelens_name: str) -> str | None:
    """The architecture a SAELens folder of ``saelens_name`` loads as when it names none."""
    return next((s.name for s in REGISTRY.values() if saelens_name in s.default_for), None)


register(topk.SPEC)
register(jumprelu.SPEC)
register(jumprelu_ste.SPEC)
