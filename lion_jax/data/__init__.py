"""Input pipeline of LION: the text tokenizers and the data fed to the model."""
