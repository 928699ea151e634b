"""Oscar's shipping app, forked the way Oscar documents (its models and migrations unchanged) so the
store can offer a choice of delivery: see repository.py."""
