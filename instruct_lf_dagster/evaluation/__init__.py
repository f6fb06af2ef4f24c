"""The paper's downstream evaluations with their baselines: they run `InstructLF` (core) and ask the platform's
local LLM resource (`definitions.local_llm`, so its response cache) for proposals."""
