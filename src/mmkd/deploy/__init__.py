"""After training: predict with an adapter, export a merged model to serve, share runs over a DVC remote."""
