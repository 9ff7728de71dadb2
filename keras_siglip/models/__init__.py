"""Model families: each folder holds one model with its towers, layers, tokenizer and image preprocessor."""
