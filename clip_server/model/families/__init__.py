"""Model families: how each kind of model is located, tokenized and built as two torch towers."""
