"""An example prunelab plugin: a first-order Taylor criterion and a one-shot Taylor method, outside ``src/``.

It extends prunelab the way any third-party package does, through Python entry points, with no file of
prunelab touched. Its ``prunelab_taylor_example-0.1.dist-info/entry_points.txt`` (beside this folder)
declares::

    [prunelab.criteria]
    taylor = prunelab_taylor_example.taylor

    [prunelab.methods]
    taylor_one_shot = prunelab_taylor_example.method

so with the folder holding both on ``sys.path`` (``PYTHONPATH=tests/plugins``; an installed package gets
the same dist-info from ``pip install``), importing :mod:`prunelab.criteria` registers the criterion
``taylor`` (:mod:`.taylor`, entry and group level) and importing :mod:`prunelab.methods` registers the
driver and method ``taylor_one_shot`` (:mod:`.method`), in every process: ``prunelab run``,
``prunelab validate`` and ``prunelab sweep`` workers. Each module is one file, as the contract promises.
"""

__version__ = "0.1"
