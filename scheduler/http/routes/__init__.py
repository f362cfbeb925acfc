"""The API's routes, one router per concern; ``scheduler.http.api.create_app`` includes them."""
