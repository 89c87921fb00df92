"""Tasks: one per paper setting, all trained by ``noisy_nodes.engine``."""
from noisy_nodes.tasks.base import Task, resolve_task

__all__ = ["Task", "resolve_task"]
