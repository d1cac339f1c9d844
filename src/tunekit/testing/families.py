"""The model families tunekit is tested on: one entry a family, the single source of the supported-models page.

Each :class:`Family` names a transformers architecture (``model_type``), the :func:`~tunekit.testing.tiny_model`
arch that builds a tiny random model of it, real checkpoints of that architecture on the Hugging Face Hub, and what
a user should know. ``tests/integration/test_families.py`` trains, reloads and merges a tiny model of every family
and checks the facts recorded here (``lora_frozen``, ``packs``); ``python scripts/supported_models.py`` renders
``docs/supported-models.md`` from this list, and a unit test fails when the page is stale.

:data:`VISION_FAMILIES` lists the vision-language families the same way (one ``tiny_model`` vision arch each);
``tests/unit/test_tiny_vlm.py`` checks each one's tiny model.

The tests run tiny random models of each architecture (no hub access in CI), not the checkpoints listed: a row
says that tunekit's code paths work for the architecture, not that a given checkpoint fits your hardware.

Example:
    >>> from tunekit.testing.families import FAMILIES
    >>> next(f for f in FAMILIES if f.model_type == "qwen2").name
    'Qwen2 / Qwen2.5'
"""

from __future__ import annotations

from dataclasses import dataclass

from tunekit.testing.models import Arch
from tunekit.testing.vision import TEMPLATE_SOURCES, VisionArch

__all__ = ["FAMILIES", "VISION_FAMILIES", "Family", "VisionFamily"]


@dataclass(frozen=True)
class Family:
    """One model family: what the supported-models page says about it, and what its test checks.

    Example:
        >>> from tunekit.testing.families import FAMILIES
        >>> [f.model_type for f in FAMILIES if not f.packs]
        ['gemma2', 'gpt_oss']
    """

    name: str  # display name
    model_type: str  # transformers' config.model_type
    arch: Arch  # tunekit.testing.tiny_model(arch=...)
    checkpoints: tuple[str, ...]  # real hub checkpoints of this architecture (examples, not tested here)
    notes: str  # what a user should know (English)
    notes_zh: str  # the same, in Chinese (docs/zh/supported-models.md)
    # Whether the released checkpoints ship a chat template (and a pad token); without one, tunekit adds its
    # built-in ChatML, and the family's test trains a tiny model that way.
    chat_template: bool = True
    # Weight tensors of a layer (layer index left out, e.g. "mlp.experts.gate_up_proj") that LoRA's default
    # target_modules="all-linear" gives no adapter: they stay frozen. Checked by the family's test.
    lora_frozen: tuple[str, ...] = ()
    # Whether SFT trains on packed (padding-free) batches; False where tunekit falls back to padded ones.
    packs: bool = True


_MOE_LORA = "LoRA adapts attention, every expert (peft wraps the fused expert tensors; gate and up at twice the rank) and the router."  # noqa: E501
_MOE_LORA_ZH = "LoRA 作用于注意力层、每个专家（peft 包装融合后的专家张量，gate/up 的秩加倍）以及路由器。"

FAMILIES: tuple[Family, ...] = (
    Family(
        name="Llama",
        model_type="llama",
        arch="llama",
        checkpoints=("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
        notes="Llama 2 and 3.x, and models built on them (DeepSeek-R1-Distill-Llama). Llama 4 is another "
        "architecture, not covered.",
        notes_zh="Llama 2、3.x 及其衍生模型（如 DeepSeek-R1-Distill-Llama）。Llama 4 是另一种架构，不在此列。",
    ),
    Family(
        name="Qwen2 / Qwen2.5",
        model_type="qwen2",
        arch="qwen2",
        checkpoints=("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-Coder-7B-Instruct", "Qwen/Qwen2-7B-Instruct"),
        notes="Qwen2.5 and Qwen2.5-Coder are the Qwen2 architecture.",
        notes_zh="Qwen2.5 与 Qwen2.5-Coder 都是 Qwen2 架构。",
    ),
    Family(
        name="Qwen3",
        model_type="qwen3",
        arch="qwen3",
        checkpoints=("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B"),
        notes="The dense Qwen3 models (q/k norms per head).",
        notes_zh="稠密版 Qwen3（每个注意力头有 q/k 归一化）。",
    ),
    Family(
        name="Qwen3-MoE",
        model_type="qwen3_moe",
        arch="qwen3_moe",
        checkpoints=("Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B"),
        notes=_MOE_LORA,
        notes_zh=_MOE_LORA_ZH,
    ),
    Family(
        name="Mistral",
        model_type="mistral",
        arch="mistral",
        checkpoints=("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-Nemo-Instruct-2407"),
        notes="Mistral 7B and Mistral NeMo (MistralForCausalLM).",
        notes_zh="Mistral 7B 与 Mistral NeMo（MistralForCausalLM）。",
    ),
    Family(
        name="Mixtral",
        model_type="mixtral",
        arch="mixtral",
        checkpoints=("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x22B-Instruct-v0.1"),
        notes=_MOE_LORA,
        notes_zh=_MOE_LORA_ZH,
    ),
    Family(
        name="Gemma 2",
        model_type="gemma2",
        arch="gemma2",
        checkpoints=("google/gemma-2-9b-it", "google/gemma-2-2b-it"),
        notes="Gemma 2 caps its attention logits (softcapping), which tunekit's packed attention cannot compute: "
        "it trains on padded batches.",
        notes_zh="Gemma 2 对注意力 logits 做 softcapping，tunekit 的打包注意力无法计算，因此用填充批次训练。",
        packs=False,
    ),
    Family(
        name="Gemma 3",
        model_type="gemma3_text",
        arch="gemma3_text",
        checkpoints=("google/gemma-3-1b-it", "google/gemma-3-1b-pt"),
        notes="The text-only Gemma3ForCausalLM. The 4B to 27B checkpoints are multimodal (model_type gemma3): not "
        "covered here, and GGUF export refuses them.",
        notes_zh="纯文本的 Gemma3ForCausalLM。4B–27B 是多模态模型（model_type 为 gemma3），不在此列，"
        "GGUF 导出也会拒绝。",
    ),
    Family(
        name="Phi-3 / Phi-4",
        model_type="phi3",
        arch="phi3",
        checkpoints=("microsoft/Phi-3-mini-4k-instruct", "microsoft/phi-4"),
        notes="Phi-4 is the Phi-3 architecture (fused qkv and gate/up projections). GGUF export refuses "
        "long-context RoPE scaling (longrope, the 128k variants): export hf and convert with llama.cpp.",
        notes_zh="Phi-4 与 Phi-3 架构相同（qkv、gate/up 投影是融合的）。GGUF 导出不支持长上下文 RoPE 缩放"
        "（longrope，128k 版本）：请导出 hf 格式后用 llama.cpp 转换。",
    ),
    Family(
        name="OLMo 2",
        model_type="olmo2",
        arch="olmo2",
        checkpoints=("allenai/OLMo-2-1124-7B-Instruct", "allenai/OLMo-2-0425-1B-Instruct"),
        notes="Norms after attention and MLP, and q/k norms across all heads.",
        notes_zh="归一化放在注意力与 MLP 之后，q/k 归一化跨所有注意力头。",
    ),
    Family(
        name="Granite 3",
        model_type="granite",
        arch="granite",
        checkpoints=("ibm-granite/granite-3.1-8b-instruct", "ibm-granite/granite-3.0-2b-instruct"),
        notes="Granite's embedding, residual, attention and logit multipliers live in the config and survive the "
        "merge. Granite 4 is another architecture (granitemoehybrid), not covered.",
        notes_zh="Granite 的 embedding、残差、注意力与 logits 缩放系数保存在配置中，合并后保持不变。"
        "Granite 4 是另一种架构（granitemoehybrid），不在此列。",
    ),
    Family(
        name="SmolLM3",
        model_type="smollm3",
        arch="smollm3",
        checkpoints=("HuggingFaceTB/SmolLM3-3B", "HuggingFaceTB/SmolLM3-3B-Base"),
        notes="Every 4th layer has no rotary embedding (NoPE); the tiny test model has such a layer.",
        notes_zh="每 4 层中有 1 层不使用旋转位置编码（NoPE）；测试用的小模型也包含这样的层。",
    ),
    Family(
        name="GLM-4",
        model_type="glm4",
        arch="glm4",
        checkpoints=("THUDM/GLM-4-9B-0414", "THUDM/GLM-4-32B-0414"),
        notes="GLM-4-0414 (Glm4ForCausalLM: partial rotary, fused gate/up). The 2024 glm-4-9b-chat needs remote "
        "code (model_type chatglm), which tunekit does not run by default; GLM-4.5 (glm4_moe) is not covered.",
        notes_zh="GLM-4-0414（Glm4ForCausalLM：部分旋转位置编码、融合的 gate/up）。2024 年的 glm-4-9b-chat 需要远程代码"
        "（model_type 为 chatglm），tunekit 默认不运行；GLM-4.5（glm4_moe）不在此列。",
    ),
    Family(
        name="DeepSeek-V3",
        model_type="deepseek_v3",
        arch="deepseek_v3",
        checkpoints=("deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-R1"),
        notes="Multi-head latent attention and routed plus shared experts. LoRA adapts attention, the routed "
        "experts and the router, but not the dense MLPs of the first layers nor the shared expert: peft maps the "
        "names gate_proj / up_proj / down_proj to the fused expert tensors on this architecture. The hub weights "
        "are FP8 (not tried here).",
        notes_zh="多头潜在注意力（MLA），路由专家加共享专家。LoRA 作用于注意力、路由专家和路由器，但不包括前几层的"
        "稠密 MLP 和共享专家：在这一架构上 peft 把 gate_proj / up_proj / down_proj 映射到融合的专家张量。"
        "Hub 上的权重是 FP8（此处未测试）。",
        lora_frozen=(
            "mlp.down_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.shared_experts.down_proj.weight",
            "mlp.shared_experts.gate_proj.weight",
            "mlp.shared_experts.up_proj.weight",
            "mlp.up_proj.weight",
        ),
    ),
    Family(
        name="gpt-oss",
        model_type="gpt_oss",
        arch="gpt_oss",
        checkpoints=("openai/gpt-oss-20b", "openai/gpt-oss-120b"),
        notes="LoRA's all-linear adapts attention only: the experts are fused 3-D tensors and the router is not an "
        "nn.Linear. Add `target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj']` to adapt the "
        "experts too (trained, reloaded and merged by test_gpt_oss_experts_train_with_target_parameters). Attention "
        "sinks: trains on padded batches. The hub experts are MXFP4 (not tried here).",
        notes_zh="LoRA 的 all-linear 只作用于注意力层：专家是融合的三维张量，路由器也不是 nn.Linear。加上 "
        "`target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj']` 就能连专家一起训练（训练、重新加载、"
        "合并都有测试）。模型使用 attention sink，因此用填充批次训练。Hub 上的专家权重是 MXFP4（此处未测试）。",
        lora_frozen=("mlp.experts.down_proj", "mlp.experts.gate_up_proj", "mlp.router.weight"),
        packs=False,
    ),
    Family(
        name="GPT-NeoX / Pythia",
        model_type="gpt_neox",
        arch="gpt_neox",
        checkpoints=("EleutherAI/pythia-1b", "EleutherAI/gpt-neox-20b"),
        notes="Base models without a chat template or pad token: tunekit adds its ChatML and a pad token (the "
        "test trains one that way).",
        notes_zh="基座模型，没有对话模板和 pad token：tunekit 会加上自带的 ChatML 和 pad token（测试即如此训练）。",
        chat_template=False,
    ),
    Family(
        name="GPT-2",
        model_type="gpt2",
        arch="gpt2",
        checkpoints=("openai-community/gpt2", "openai-community/gpt2-medium"),
        notes="Conv1D layers, learned absolute positions, tied head. Base models without a chat template or pad "
        "token: tunekit adds both (the test trains one that way).",
        notes_zh="使用 Conv1D 层、可学习的绝对位置编码和共享的输出层。基座模型没有对话模板和 pad token："
        "tunekit 会加上两者（测试即如此训练）。",
        chat_template=False,
    ),
)


@dataclass(frozen=True)
class VisionFamily:
    """One vision-language family: what the supported-models page says about it, and what its tests check.

    Each builds with :func:`~tunekit.testing.tiny_model` (``arch``) as an image-text-to-text model with its
    processor; ``tests/unit/test_tiny_vlm.py`` loads it with the auto classes, processes an image conversation
    through the chat template and checks the image tokens, the loss and generation.

    Example:
        >>> from tunekit.testing.families import VISION_FAMILIES
        >>> [f.arch for f in VISION_FAMILIES if f.video]
        ['qwen2_vl', 'qwen2_5_vl', 'qwen3_vl', 'smolvlm']
    """

    name: str  # display name
    model_type: str  # transformers' config.model_type
    arch: VisionArch  # tunekit.testing.tiny_model(arch=...)
    checkpoints: tuple[str, ...]  # real hub checkpoints of this architecture (examples, not tested here)
    tested: str  # what sets the family apart, which its tiny model has and the tests exercise (English)
    tested_zh: str  # the same, in Chinese
    processor: str  # transformers' processor class
    # The processor also has a video processor, which transformers builds with torchvision only: without it,
    # AutoProcessor fails and tunekit.testing.load_processor loads the processor for images.
    video: bool = False
    # Why tunekit refuses to train the family (empty: it trains, reloads and merges), and a pattern of the
    # IncompatibleError it raises: tests/integration/test_vision_families.py checks the one or the other.
    refused: str = ""
    refused_match: str = ""
    refused_zh: str = ""  # the reason, in Chinese

    @property
    def template_source(self) -> str:
        """Where the tiny model's chat template was copied from (the released checkpoint's file)."""
        return TEMPLATE_SOURCES[self.arch]


VISION_FAMILIES: tuple[VisionFamily, ...] = (
    VisionFamily(
        name="Qwen2-VL",
        model_type="qwen2_vl",
        arch="qwen2_vl",
        checkpoints=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
        tested="Images at their own resolution (a grid of 2 x 2 merged patches, `image_grid_thw`) and multimodal "
        "RoPE, whose positions need `mm_token_type_ids` from the processor.",
        tested_zh="图像按原始分辨率切成 2×2 合并的 patch 网格（`image_grid_thw`），多模态 RoPE 的位置需要处理器给出的 "
        "`mm_token_type_ids`。",
        processor="Qwen2VLProcessor",
        video=True,
    ),
    VisionFamily(
        name="Qwen2.5-VL",
        model_type="qwen2_5_vl",
        arch="qwen2_5_vl",
        checkpoints=("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
        tested="As Qwen2-VL, with windowed attention in the vision tower (one full-attention layer) and a gated MLP.",
        tested_zh="与 Qwen2-VL 相同，视觉编码器使用窗口注意力（一层全局注意力）和门控 MLP。",
        processor="Qwen2_5_VLProcessor",
        video=True,
    ),
    VisionFamily(
        name="Qwen3-VL",
        model_type="qwen3_vl",
        arch="qwen3_vl",
        checkpoints=("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"),
        tested="Interleaved multimodal RoPE, learned vision positions interpolated to the image, and DeepStack "
        "(features of an early tower layer added to the language model's first layers).",
        tested_zh="交错式多模态 RoPE，按图像插值的可学习视觉位置编码，以及 DeepStack"
        "（视觉编码器浅层特征注入语言模型前几层）。",
        processor="Qwen3VLProcessor",
        video=True,
    ),
    VisionFamily(
        name="Gemma 3 (vision)",
        model_type="gemma3",
        arch="gemma3",
        checkpoints=("google/gemma-3-4b-it", "google/gemma-3-12b-it"),
        tested="A SigLIP tower whose patches are pooled to a fixed number of tokens per image, framed by "
        "start/end-of-image tokens; the image tokens attend to each other both ways (`token_type_ids`).",
        tested_zh="SigLIP 视觉编码器，patch 池化为每张图固定数量的 token，前后有图像起止标记；图像 token 之间双向注意力"
        "（`token_type_ids`）。",
        processor="Gemma3Processor",
    ),
    VisionFamily(
        name="LLaVA-1.5",
        model_type="llava",
        arch="llava",
        checkpoints=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"),
        tested="A CLIP tower (its class token dropped, features from the second-to-last layer) and an MLP projector "
        "into a Llama; the template's `{% generation %}` markers.",
        tested_zh="CLIP 视觉编码器（去掉 class token，取倒数第二层特征），经 MLP 投影接入 Llama；模板带 "
        "`{% generation %}` 标记。",
        processor="LlavaProcessor",
    ),
    VisionFamily(
        name="LLaVA-NeXT",
        model_type="llava_next",
        arch="llava_next",
        checkpoints=("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"),
        tested="Any-resolution tiles (`image_sizes`, a newline embedding per row of tiles) on Mistral; the released "
        "template ends a reply with the text `<\\s>`, which tunekit reads as the `</s>` it stands for.",
        tested_zh="任意分辨率切片（`image_sizes`，每行切片后有换行嵌入），语言模型为 Mistral；发布的模板用文本 `<\\s>` "
        "结束回复，tunekit 把它当作它本应表示的 `</s>`。",
        processor="LlavaNextProcessor",
    ),
    VisionFamily(
        name="Idefics3",
        model_type="idefics3",
        arch="idefics3",
        checkpoints=("HuggingFaceM4/Idefics3-8B-Llama3", "HuggingFaceTB/SmolVLM-Instruct"),
        tested="Images split into tiles plus the whole image, each tile's patches folded into fewer tokens (pixel "
        "shuffle), `pixel_attention_mask`. SmolVLM (v1) is this architecture.",
        tested_zh="图像切成若干切片加一张整图，每片的 patch 经 pixel shuffle 折叠为更少的 token，带 "
        "`pixel_attention_mask`。SmolVLM（第一版）即此架构。",
        processor="Idefics3Processor",
    ),
    VisionFamily(
        name="SmolVLM2",
        model_type="smolvlm",
        arch="smolvlm",
        checkpoints=("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
        tested="As Idefics3, with SmolVLM2's processor (its video processor needs torchvision; the processor needs "
        "the `num2words` package).",
        tested_zh="与 Idefics3 相同，使用 SmolVLM2 的处理器（其视频处理器需要 torchvision；"
        "处理器需要 `num2words` 包）。",
        processor="SmolVLMProcessor",
        video=True,
    ),
)
