"""Create the benchmark chatflows in the configured database (run by bench.run, not imported).

    python -m bench.flows '{"delay": "http://127.0.0.1:18999/v1", "nodelay": "http://…/v1"}'

One chatflow per mock model, in Flowise's export shape: chatOpenAI (basepath = the mock,
modelName gpt-4o-mini, streaming true) + bufferMemory + conversationChain, with edges. Prints
`{"delay": "<chatflow id>", …}` as the last line. Needs the server's environment
(DATABASE_URL, …): the anonymous API cannot create chatflows, so this goes through the service.
"""

from __future__ import annotations

import json
import os
import sys


def flow_data(base_url: str) -> str:
    """Return flowData (a JSON string) for chatOpenAI + bufferMemory + conversationChain."""
    from tests.unit.engine.flows import conversation, flow_json, node, openai

    return flow_json(
        [
            openai("chatOpenAI_0", base_url=base_url, modelName="gpt-4o-mini", streaming=True),
            node("bufferMemory_0", "bufferMemory", sessionId="", memoryKey="chat_history"),
            conversation("conversationChain_0", model="chatOpenAI_0", memory="bufferMemory_0"),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Create one chatflow per `name: base URL` pair given as JSON; print their ids as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowsite.settings")
    import django

    django.setup()
    from predictions.services import chatflow_create

    ids = {
        name: str(chatflow_create(name=f"bench {name}", flow_data=flow_data(base_url)).id)
        for name, base_url in json.loads(argv[0]).items()
    }
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
