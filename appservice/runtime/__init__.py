"""The running process: start-up and stop, which process is active, background workers,
the mail sender, monitoring and logging."""
