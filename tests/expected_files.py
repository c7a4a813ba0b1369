"""The exact files a training run writes, shared by the unit tests and the end-to-end pipeline tests."""

from mmkd.modeling import ADAPTER_INFO

# An adapter folder (stage1, stage2): PEFT's adapter (safetensors, no pickles) and model card, and mmkd's record of
# the base, the parent adapter and the prompt version.
ADAPTER_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors", ADAPTER_INFO}

# A bootstrapped demo model folder: a model and processor that from_pretrained can load.
DEMO_MODEL_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
