"""The parts of the OpenAI-compatible server client (``mmkd.labelling.openai_compat``): its settings (``config``),
the request bodies (``requests``), how faults are read (``faults``), each server's health and circuit breaker
(``circuit``), the dispatch of items over the servers with retries (``dispatch``) and the score read from logprobs
(``logprobs``)."""
