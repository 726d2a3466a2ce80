"""Custom TFX components of graft (kept out of the Transform/Trainer module directory, so
editing them does not change the user-code wheel hash and retrain the model)."""
