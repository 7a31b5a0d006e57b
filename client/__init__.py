"""The chat client: ChatClient (failover, retries) and the prompt_toolkit REPL. Not built yet."""
