"""The method, host-independent: the Backend contract a host implements (encode, start, denoise, predict_x0,
decode), prompts with the class-token slot, the training loop of a discriminative class token (Schwartz et al.),
DATE's test-time updates, and the measures (top-k accuracy with and without a token, Frechet distance). It
imports the settings, the formats and the classifiers; never a job, the CLI or a host."""
