"""The exit statuses of precise-fast's commands beyond 0 (done) and 1 (a bug: its traceback says
where); docs/RELIABILITY.md's table lists what returns each, with its test."""

BAD_INPUT = 2  # the user's input or machine (config, checkpoint, folder, disk): one line naming it
CANNOT_TRAIN = 3  # the run trains nothing, its rewards keep failing, or it diverged
