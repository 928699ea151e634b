"""The persona-token agent: action grammar, policies, models, training and generation."""
