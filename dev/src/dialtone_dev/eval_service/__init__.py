"""``dialtone eval-worker``: the Tests page's worker as a process of its own (see :mod:`.main`)."""
