"""`nas dashboard`: a live web view of the jobs in a database (Starlette + uvicorn, charts by
plotly.js served from the plotly package). `app.create_app` builds the application over a
`Storage`; `server.run` checks the options, opens the database and serves it."""
