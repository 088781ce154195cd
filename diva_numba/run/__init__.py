"""Whole runs on files: the image analogy into a directory, and the video transfer
(its parameters, plan, work directory, frame loop, and scale-out over shots)."""
