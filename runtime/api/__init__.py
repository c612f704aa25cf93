"""The wire types of the admin API: what the server answers and both clients decode."""
