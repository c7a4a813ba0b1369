"""Student training: Stage 1 (LoRA SFT on all teacher answers) and Stage 2 (LoRA SFT + DPO on conflicts)."""
