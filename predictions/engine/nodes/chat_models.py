"""Chat model nodes: chatOpenAI (any OpenAI-compatible server) and chatOfflineModel."""

from __future__ import annotations

from ..inputs import InputReader
from ..openai_chat import OpenAIChatModel, OpenAISettings, Timeout
from ..providers import ChatModel, OfflineChatModel
from ..types import EngineConfig
from .base import CHAT_MODEL, BuildContext, InputSpec, NodeSpec, NodeType

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def openai_settings(reader: InputReader, config: EngineConfig) -> OpenAISettings:
    """Return validated request settings from a chatOpenAI node's inputs."""
    base_url = (reader.text("basepath") or config.openai_base_url).strip()
    if not base_url.startswith(("http://", "https://")):
        raise reader.error("basepath", f"must be an http(s) URL, got {base_url!r}")
    headers = reader.json_object("baseOptions")
    for key, value in headers.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise reader.error("baseOptions", f'header "{key}" must be a string')
    timeout_ms = reader.number("timeout")
    if timeout_ms is not None and timeout_ms <= 0:
        raise reader.error(
            "timeout", f"must be a positive number of milliseconds, got {timeout_ms}"
        )
    read_timeout = timeout_ms / 1000 if timeout_ms is not None else config.read_timeout
    # A non-streaming answer arrives in one piece, after the whole generation.
    answer_timeout = read_timeout
    if timeout_ms is None and config.answer_timeout:
        answer_timeout = max(read_timeout, config.answer_timeout)
    stop = reader.text("stopSequence") or ""
    return OpenAISettings(
        base_url=base_url,
        api_key=(reader.text("openAIApiKey") or config.openai_api_key).strip(),
        model=(reader.text("modelName") or DEFAULT_OPENAI_MODEL).strip(),
        timeout=Timeout(connect=config.connect_timeout, read=read_timeout),
        complete_timeout=Timeout(connect=config.connect_timeout, read=answer_timeout),
        temperature=reader.number("temperature"),
        max_tokens=reader.integer("maxTokens", minimum=1),
        top_p=reader.number("topP"),
        frequency_penalty=reader.number("frequencyPenalty"),
        presence_penalty=reader.number("presencePenalty"),
        stop=tuple(word.strip() for word in stop.split(",") if word.strip()),
        headers={str(k): str(v) for k, v in headers.items()},
    )


class ChatOpenAINode(NodeType):
    """`chatOpenAI`: OpenAI chat completions at `basepath`, or the offline model if forced."""

    name = "chatOpenAI"
    label = "ChatOpenAI"
    kind = frozenset({CHAT_MODEL})
    inputs = (
        InputSpec("credential"),
        InputSpec("openAIApiKey"),
        InputSpec("modelName"),
        InputSpec("temperature"),
        InputSpec("streaming"),
        InputSpec("maxTokens"),
        InputSpec("topP"),
        InputSpec("frequencyPenalty"),
        InputSpec("presencePenalty"),
        InputSpec("timeout"),
        InputSpec("stopSequence"),
        InputSpec("basepath"),
        InputSpec("baseOptions"),
    )

    def streams(self, node: NodeSpec) -> bool:
        """Return False only when `streaming` is false / "false"."""
        return InputReader(node.id, node.type, node.inputs).boolean("streaming", True)

    def check(self, node: NodeSpec) -> None:
        reader = InputReader(node.id, node.type, node.inputs)
        reader.boolean("streaming", True)
        openai_settings(reader, EngineConfig())

    async def build(self, ctx: BuildContext) -> ChatModel:
        config = ctx.run.config
        if config.force_offline:
            return OfflineChatModel(token_delay=config.offline_token_delay)
        return OpenAIChatModel(
            node_id=ctx.node.id,
            node_type=ctx.node.type,
            settings=openai_settings(ctx.read, config),
            client=ctx.run.http,
        )


class ChatOfflineModelNode(NodeType):
    """`chatOfflineModel`: Flowsite's deterministic chat model; never touches the network."""

    name = "chatOfflineModel"
    label = "Offline Chat Model (deterministic, no network)"
    kind = frozenset({CHAT_MODEL})
    inputs = (InputSpec("tokenDelayMs"), InputSpec("reply"), InputSpec("tokens"))

    def streams(self, node: NodeSpec) -> bool:
        """Return True: the offline model always streams."""
        return True

    def check(self, node: NodeSpec) -> None:
        reader = InputReader(node.id, node.type, node.inputs)
        reader.number("tokenDelayMs")
        reader.integer("tokens")

    async def build(self, ctx: BuildContext) -> ChatModel:
        reader = ctx.read
        delay_ms = reader.number("tokenDelayMs")
        if delay_ms is not None and delay_ms < 0:
            raise reader.error("tokenDelayMs", f"must not be negative, got {delay_ms}")
        return OfflineChatModel(
            token_delay=delay_ms / 1000
            if delay_ms is not None
            else ctx.run.config.offline_token_delay,
            reply=reader.text("reply"),
            tokens=reader.integer("tokens"),
        )
