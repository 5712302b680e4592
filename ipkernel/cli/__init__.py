"""The command-line programs: ``ipcontroller``, ``ipengine``, ``ipcluster``."""
