"""Real servers for tests: a fault-injecting aiohttp app and a throwaway nginx."""
