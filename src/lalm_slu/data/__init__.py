"""Records and the files made from them: manifests, corpora readers, clips, speech budgets, mixtures, the answer format."""
