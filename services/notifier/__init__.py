"""The notifier service: alerts from the Redis stream to people (Apprise URLs), grouped and rate-limited."""
