"""Vision-language-model labelers: ordinary and complementary labels from a Hugging Face VLM."""
