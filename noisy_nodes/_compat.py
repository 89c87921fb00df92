"""Compatibility shims, in one place.

jraph 0.0.6.dev0 still calls ``jax.tree_map`` / ``jax.tree_leaves`` which JAX
removed; ``zero_out_padding`` and friends then raise AttributeError.  Importing
this module (``noisy_nodes/__init__`` does) restores those names from
``jax.tree_util`` before jraph is used.
"""
import jax

for _name, _fn in (("tree_map", jax.tree_util.tree_map),
                   ("tree_leaves", jax.tree_util.tree_leaves),
                   ("tree_flatten", jax.tree_util.tree_flatten),
                   ("tree_unflatten", jax.tree_util.tree_unflatten),
                   ("tree_structure", jax.tree_util.tree_structure)):
  if not hasattr(jax, _name):
    setattr(jax, _name, _fn)
