"""The Slack app (slack-bolt): review cards, /retrain, intake, App Home, scheduler jobs."""
