"""The Lungwatch gateway: validates requests, asks the model server, accounts for every request."""
