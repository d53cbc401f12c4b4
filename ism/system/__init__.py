"""Files, databases, processes and the CPU: the store, database URLs, child processes, machine facts."""
