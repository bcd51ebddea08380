from replyloop.cli.main import main

main()
