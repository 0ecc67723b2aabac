"""The Flow's executors. Importing any of them makes this process's executor gRPC servers ask for
the internal token (`clip_server.internal_auth`): a client cannot get around the gateway."""

from clip_server.internal_auth import guard_executor_servers

guard_executor_servers()
