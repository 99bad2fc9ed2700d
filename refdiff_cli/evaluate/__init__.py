"""evaluate: score SR methods on a test set, overall and in changed and unchanged regions."""
