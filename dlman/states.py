"""The states of a job in the queue.

A module of its own, without imports: the command line needs the states to declare its options,
and must start without loading the queue.
"""

STATES = ("queued", "active", "paused", "done", "failed")
