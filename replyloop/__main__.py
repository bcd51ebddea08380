from replyloop.cli.main import main

if __name__ == "__main__":  # not when a spawned import worker imports this module
    main()
