"""Events and notifications: the durable event stream, callback delivery, notify command lines."""
