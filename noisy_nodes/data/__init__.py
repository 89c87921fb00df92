"""The data layer shared by every task: structures, neighbour lists, graphs
and dynamic batching (no model, no paper).

``structures``  the ``Structure`` record every reader produces and validation;
``neighbors``   periodic radius / k-nearest neighbour lists (vesin search);
``graphs``      a structure -> single-graph ``jraph.GraphsTuple``;
``batching``    node/edge/graph budgets, padding and the resumable stream.
"""
