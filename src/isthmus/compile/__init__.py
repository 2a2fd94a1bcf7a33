"""The compiler: intent in the ledger to per-node desired state (pure; imports no driver)."""

from isthmus.compile.compiler import Compiler
from isthmus.compile.state import Delta, NodeState

__all__ = ["Compiler", "Delta", "NodeState"]
