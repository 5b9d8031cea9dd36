"""Tiny English stories, written by a program: the training corpus for a small Grok-1.

Why a program and not a download. A corpus that is a few hundred lines of Python is
license-clean (written for minigrok, Apache-2.0 like the rest of the project), works
offline, weighs nothing in the repository and regenerates the same bytes on every machine:
``corpus("train", n, seed)`` is the data set. The stories imitate TinyStories (simple past
tense, short sentences, a child, a friend, a toy, a lesson) because that is the kind of
English a model of about a million parameters can learn in under an hour on two cores.

Why random names. The hero and the friend are drawn from 176 first names of many
cultures, each with a fixed pronoun, so nothing before a name's first mention predicts it;
afterwards the name recurs, and the only way to predict those mentions is to copy it from
earlier in the context. That is the skill (an induction head) that makes a small
transformer look clever, and the corpus pays for it in every story. About two stories in
five hold a memory game: a list of 6 to 16 words drawn from the whole lexicon, said and
then repeated exactly, which rewards copying an arbitrary sequence rather than a familiar
one. (With one story in ten and lists of nouns only, a first run had learned no copying
at all after 1.6 million tokens: a random sequence shown twice was predicted no better
the second time. Names alone can be predicted by attending to any name in the story,
which is not copying.)

Statistics (seed 0, 20,000 train stories): a lexicon of 827 words, names included, which
Grok-1's 131,072-token SentencePiece tokenizer maps onto about 1,300 distinct token ids;
80 to 200 words a story, 112 on average (143 tokens); about 70% begin with "Once upon a
time". The held-out split uses no token id that the train split lacks, so a model trained
on the train split's ids alone can encode every held-out story.

The grammar is data. A plot is a list (a sequence) of steps; a tuple is a choice among
alternatives, optional when its first element is a probability; an alternative may itself
be a list, so plots branch in structure, not only in the words filling their slots. Every
word the generator can emit lives in an upper-case table of this module, which is how
``words()`` finds them all.
"""

import functools
import random
import re

GIRLS = """Mia Lily Emma Ava Sofia Zoe Ella Chloe Lucy Anna Sara Nora Maya Hana Yuki Mei Priya
Asha Meera Anya Layla Noor Amira Fatima Zara Amara Nia Zuri Imani Ama Elena Lucia Rosa Maria
Carmen Ines Olga Nina Vera Katya Astrid Freya Ingrid Elsa Greta Lena Heidi Giulia Chiara Marie
Claire Julie Camille Aiko Emi Sakura Mai Linh Mina Jia Tamar Noa Leah Ruth Esther Aisha Kiara
Leila Dalia Yara Salma Ada Ayla Elif Selin Ana Luna Paula Isabel Alma Frida Maja Hanna Nadia
Rina Ayesha""".split()
BOYS = """Tom Ben Sam Max Leo Jack Noah Liam Finn Oscar Theo Hugo Louis Jules Pierre Felix Otto
Hans Lars Erik Sven Nils Ivan Boris Igor Sasha Marco Luca Paolo Carlos Diego Mateo Pablo Juan
Luis Omar Ali Yusuf Amir Karim Hassan Samir Tariq Kofi Kwame Tunde Femi Jabari Ade Obi Musa
Ravi Arjun Dev Raj Vikram Rohan Kenji Hiro Taro Sora Ren Kai Wei Chen Jun Bao Minh Tuan Eli
Avi Ari Noam Dan Emre Mehmet Oren Jonas Tobias Anton Pedro Rafael Tomas Andre Malik Kian Reza
Darius Nikos Dimitri""".split()
# Pets get names of their own, none of them a child's, so "a cat named Pip" is one more
# name to copy, never confused with the hero.
PET_NAMES = """Pip Spot Fluffy Buddy Coco Bubbles Biscuit Patch Sparky Pepper Whiskers Snowball
Peanut Bingo Rex Rusty Ziggy Noodle Pickle Mittens Toffee Fudge""".split()
PETS = ("cat", "dog", "puppy", "kitten", "bunny", "turtle", "duck", "hamster")
PET_LOOKS = ("little", "small", "big", "white", "black", "brown", "gray", "orange")
# (subject, object, possessive, possessive pronoun, child)
PRONOUNS = {"she": ("she", "her", "her", "hers", "girl"), "he": ("he", "him", "his", "his", "boy")}
KID_LOOKS = ("little", "happy", "kind", "brave", "curious", "young", "clever", "cheerful", "shy")
GROWNUPS = (("mom", "she"), ("dad", "he"), ("grandma", "she"), ("grandpa", "he"))
COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black",
          "brown", "gray", "gold")
SIZES = ("big", "little", "small", "shiny", "new", "old")
TOYS = ("ball", "kite", "doll", "teddy bear", "toy car", "toy train", "robot", "drum", "boat",
        "truck", "puppet", "whistle")
GIFTS = ("kite", "book", "hat", "scarf", "doll", "teddy bear", "toy car", "drum", "puzzle",
         "ball", "bike", "umbrella")
FOODS = ("apple", "banana", "cookie", "sandwich", "orange", "pear", "plum", "peach", "carrot",
         "cupcake", "muffin", "cake")
# A place and what a child sees there; the sights are counted, so they have plurals.
PLACES = {
    "park": ("duck", "swing", "squirrel", "dog", "kite"),
    "beach": ("shell", "crab", "boat", "seagull", "sandcastle"),
    "forest": ("owl", "deer", "mushroom", "fox", "rabbit"),
    "farm": ("cow", "pig", "horse", "hen", "sheep", "goat"),
    "zoo": ("lion", "monkey", "elephant", "giraffe", "zebra", "tiger"),
    "lake": ("duck", "fish", "frog", "boat", "swan"),
    "market": ("apple", "pumpkin", "melon", "flower", "basket"),
    "museum": ("dinosaur", "painting", "statue", "rocket"),
    "pond": ("frog", "duck", "turtle", "dragonfly"),
}
PLANTS = ("sunflower", "tomato", "pumpkin", "bean", "strawberry", "carrot", "rose", "daisy")
SKILLS = (("ride a bike", "riding a bike"), ("swim", "swimming"), ("read", "reading"),
          ("fly a kite", "flying a kite"), ("climb a tree", "climbing trees"),
          ("bake cookies", "baking cookies"), ("jump rope", "jumping rope"),
          ("whistle", "whistling"), ("skate", "skating"), ("draw", "drawing"),
          ("play the drum", "playing the drum"), ("sing", "singing"), ("dance", "dancing"))
GAMES = ("tag", "hide and seek", "catch", "with blocks", "with the ball")
HAPPY = ("happy", "glad")
SAD = ("sad", "upset", "unhappy")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve")
IRREGULAR = {"deer": "deer", "sheep": "sheep", "fish": "fish", "tomato": "tomatoes",
             "peach": "peaches"}
# Heard only in memory games, beside the nouns of the other tables.
THINGS = ("cup", "moon", "star", "sun", "tree", "hill", "door", "bed", "chair", "spoon", "sock",
          "shoe", "key", "bell", "cloud", "leaf", "stone", "nest", "egg", "milk", "bread", "box",
          "pen", "map", "ring", "clock", "lamp", "rope", "bag", "coat", "bench", "candle", "seed",
          "towel", "bush", "pocket", "rainbow", "wing", "fork", "brush")
ARTICLES = ("a", "an")
ONE_DAY = ("One day", "One morning", "One afternoon", "Then one day")
# After an opening that already said "One day", the plot must not say it again.
LATER = ("Later that day", "That afternoon", "Soon")

ONCE = ("Once upon a time, there was {a_kid} named {A}.",
        "Once upon a time, there lived {a_kid} named {A}.",
        "Once upon a time, in a small town, there was {a_kid} named {A}.",
        "Once upon a time, {a_kid} named {A} lived in a little house by the {home}.")
OTHER_OPENINGS = ("One day, {a_kid} named {A} woke up early.",
                  "Long ago, there lived {a_kid} named {A}.",
                  "There was once {a_kid} named {A}.",
                  "Long ago, in a village by the {home}, there lived {a_kid} named {A}.")
HOMES = ("river", "sea", "woods", "hills", "lake")
INTRO = (0.5, "{He} lived with {his} {mom} in a little house.", "{He} loved to play outside.",
         "{He} had a big smile and a kind heart.", "{He} liked to look at the stars at night.",
         "Every day, {he} played outside until dinner.")
SETTING = (0.3, "The sun was bright, and the sky was blue.",
 "The birds were singing in the trees.",
           "It was a warm day in spring.", "It was a cold day, and the wind was blowing.")

# The plots; a plot's last step is its closing sentence.
PLOTS = (
    # A lost toy, looked for and found.
    [
        ("{A} had {a_toy}. {He} loved it very much.",
         "{A} had {a_toy}. It was {his} favorite toy.",
         "{A}'s favorite toy was {a_toy}."),
        (0.5, "{He} took it everywhere.", "{He} played with it every day.",
         "{He} even took it to bed at night."),
        "\n",
        ("{one_day}, {A} could not find the {toy}.", "{one_day}, the {toy} was gone.",
         "{one_day}, {A} looked for the {toy}, but it was not there."),
        (0.6, "{He} felt {sad}.", "{A} was very {sad}.", "{His} eyes filled with tears."),
        (0.5, "{He} had played with it in the garden the day before.",
         '"Where is my {toy}?" {he} asked.'),
        ("{He} looked under the bed. {He} looked in the toy box. It was not there.",
         "{He} looked in the kitchen and in the garden, but {he} did not see it.",
         "{He} looked everywhere, but {he} could not find it."),
        (0.7, ['"{Mom}, have you seen my {toy}?" asked {A}.',
               ('"No, I have not," said {his} {mom}. "Let\'s look together."',
                '"Don\'t worry," said {his} {mom}. "We will find it."')],
         '{A} went to {his} {mom}. "I lost my {toy}," {he} said.'),
        "\n",
        (["Then {his} {pet}, {Pet}, ran into the room.", "{Pet} had the {toy} in its mouth!"],
         "Then {A} saw something {color} under the table. It was the {toy}!",
         ["Then {his} friend {B} came to the door.", '"I found this in the garden," said {B}.',
          "{bHe} held up the {toy}."],
         "At last, {A} looked in {his} coat pocket. The {toy} was there!"),
        (0.6, '"My {toy}!" cried {A}.', '"There you are!" said {A}.'),
        (0.4, '"Thank you!" said {A}. {He} gave {Pet} a big hug.',
         "{His} {mom} smiled. {mHe} was {happy} too."),
        ("{A} hugged the {toy}. {He} was so {happy}.", "{A} smiled and held the {toy} tight."),
        ("From that day on, {A} always kept the {toy} in a safe place.",
         "{A} never lost the {toy} again.", "That night, {A} slept with the {toy} next to {him}."),
    ],
    # Sharing a toy with a new friend.
    [
        ("{A} had {a_toy}. {He} liked to play with it at the park.",
         "{A} got {a_toy} from {his} {mom}. {He} took it to the park."),
        (0.5, "The sun was warm, and the sky was blue.",
         "It was a nice day, and many children were playing."),
        (0.5, "{A} played with the {toy} on the grass.", "{A} sat on a bench with the {toy}."),
        ("At the park, {he} saw {a_bkid} named {B}.", "There {he} met {a_bkid} named {B}."),
        ("{B} was sitting alone. {bHe} looked {sad}.", "{B} had no toys to play with.",
         "{B} looked at the {toy} with big eyes."),
        ('"Can I play with your {toy}?" asked {B}.',
         '"I like your {toy}," said {B}. "Can I play with it too?"'),
        (0.7, "{A} did not want to share at first. The {toy} was {hers}.",
         "{A} held the {toy} close. {He} wanted to keep it."),
        (0.5, 'Then {he} remembered what {his} {mom} said: "It is good to share."',
         "Then {he} saw that {B} was {sad}."),
        ('"Yes, you can," said {A}.', '"Let\'s play together!" said {A}.',
         "{A} gave the {toy} to {B}."),
        "\n",
        (0.5, "{B} smiled a big smile.", "{B} jumped up and down."),
        ("{A} and {B} played with the {toy} all day.",
         "They took turns with the {toy}. They laughed and ran.",
         "They played until the sun went down."),
        (0.6, '"Thank you, {A}," said {B}. "You are a good friend."'),
        ("From that day on, {A} and {B} were best friends.", "{A} learned that sharing is fun.",
         "{A} was {happy}. Sharing made playing more fun."),
    ],
    # A trip to a place, with things to count.
    [
        ("{one_day}, {A} and {his} {mom} went to the {place}.",
         '{one_day}, {A}\'s {mom} said, "Let\'s go to the {place} today!"'),
        (0.6, "{A} was so excited. {He} put on {his} shoes and ran to the door.",
         "{He} packed {a_food} and a bottle of water."),
        (0.5, "The {place} was big and full of things to see.",
         "It was a long walk, but {A} did not mind."),
        "\n",
        ("At the {place}, {A} saw {num} {sights}.", "First, they saw {num} {sights}.",
         "{A} counted the {sights}. There were {num} of them!"),
        (0.7, '"Look, {Mom}!" said {A}. "I see {a_sight}!"',
         '"Wow!" said {A}. "I love the {sights}!"'),
        (0.5, "Then {A} met {a_bkid} named {B}. They played together for a while.",
         "{A} found a little {color} stone and put it in {his} pocket."),
        (0.5, "{A} held {his} {mom}'s hand so {he} would not get lost."),
        (0.6, "They sat down and ate {foods}.", "They had a picnic under a big tree."),
        ("When the sun went down, it was time to go home.", "Soon it was time to go home."),
        ("That night, {A} dreamed about the {sights}.",
         '"Can we come back tomorrow?" asked {A}. {His} {mom} smiled and said yes.',
         "It was the best day ever."),
    ],
    # A storm, and a pet left outside.
    [
        ("{A} had {a_pet} named {Pet}.",
         "{A} lived in a little house with {his} {mom} and {a_pet} named {Pet}."),
        (0.5, "{Pet} liked to play in the garden.", "{A} and {Pet} played together every day."),
        ("{one_day}, dark clouds filled the sky.",
         "{one_day}, the sky turned gray, and the wind began to blow."),
        ("Then came the rain. Soon there was a big storm.",
         "Soon, rain began to fall. Then there was loud thunder."),
        ("{A} was scared. {He} ran inside.",
         "{A} ran into the house. {He} was scared of the thunder."),
        "\n",
        ("But where was {Pet}? {Pet} was still in the garden!",
         "Then {A} saw that {Pet} was not inside."),
        (0.6, '"{Mom}, {Pet} is out in the rain!" cried {A}.'),
        ("{A} was scared, but {he} was brave. {He} put on {his} coat and ran outside.",
         "{A} and {his} {mom} took an umbrella and went outside."),
        ("{A} found {Pet} under a bush. {Pet} was wet and cold.",
         "{Pet} was hiding under the table in the garden."),
        ("{A} picked {Pet} up and ran back inside.", "{A} carried {Pet} into the warm house."),
        (0.6, "{His} {mom} gave {him} a warm towel.", "They sat by the fire and dried off."),
        (0.5, "Soon the storm was over. The sun came out, and there was a rainbow in the sky."),
        ('{A} hugged {Pet}. "You are safe now," {he} said.',
         "From that day on, {A} always made sure {Pet} was inside before the rain."),
    ],
    # Making a friend.
    [
        ("{A} had just moved to a new town.", "{A} was shy. {He} did not have many friends."),
        (0.6, "{He} missed {his} old friends.",
         "{He} wanted to make a new friend, but {he} did not know how."),
        ("{one_day}, {he} went to the park and saw {a_bkid} named {B} on the swings.",
         "{one_day}, {he} saw {a_bkid} named {B} sitting under a tree.",
         "{one_day}, {a_bkid} named {B} came to play next door."),
        (0.6, "{B} was reading a book about {sights}.", "{B} was playing with {a_toy}.",
         "{B} was drawing a picture of {a_pet}."),
        ("{A} wanted to say hello, but {he} felt shy.", "{A} walked over slowly."),
        ('"Hi, I am {A}," {he} said. "What is your name?"',
         '"Hello," said {A}. "Can I play with you?"'),
        ('"I am {B}," said the {bkid} with a smile.', '{B} smiled. "Yes! My name is {B}."'),
        "\n",
        (0.7, "{A} and {B} talked about {foods}, animals, and games.",
         "They found out that they both liked {foods}."),
        ("They played {game} together until dinner time.",
         "They ran, jumped, and laughed all afternoon."),
        (0.5, '"Will you come back tomorrow?" asked {B}. "Yes!" said {A}.'),
        ("From that day on, {A} and {B} were best friends.",
         "{A} was not shy anymore. {He} had a new friend.",
         "That night, {A} told {his} {mom} all about {B}."),
    ],
    # Learning to do something hard.
    [
        ("{A} wanted to learn to {skill}.",
         "{A} saw {his} friend {B} {skill}, and {he} wanted to learn too."),
        (['"Will you help me?" {he} asked {his} {mom}.',
          ('"Yes, of course," said {his} {mom}.', "{His} {mom} smiled and said yes.")],
         '{His} {mom} said, "I will help you."'),
        (0.6, "First, {his} {mom} showed {him} how to do it.",
         "{His} {mom} showed {him} what to do."),
        ("The first time {A} tried to {skill}, {he} could not do it.",
         "{A} tried and tried, but it was very hard."),
        (0.6, '{He} felt {sad}. "I can\'t do it," {he} said.', "{A} wanted to give up."),
        ('"Don\'t give up," said {his} {mom}. "Try again."',
         '"Keep trying," said {his} {mom}. "You can do it!"'),
        "\n",
        (0.6, "So {A} practiced {skilling} every day.",
         "{A} tried again the next day, and the day after that."),
        ("{one_day}, {A} tried one more time. This time, {he} did it!",
         "At last, after many days, {A} could {skill}!"),
        (0.7, '"I did it!" shouted {A}. "I can {skill}!"'),
        ("{His} {mom} clapped and gave {him} a big hug.", "{His} {mom} was very proud of {him}."),
        ("{A} learned that if you keep trying, you can do hard things.",
         "From that day on, {A} loved {skilling}.",
         "Later, {A} helped {his} friend {B} learn to {skill} too."),
    ],
    # A birthday and a present.
    [
        ("It was {A}'s birthday. {He} was {age} years old today!",
         "{A} woke up early. It was {his} birthday!"),
        ("{His} {mom} made a big cake with {age} candles.",
         "{His} {mom} made a cake with {color} flowers on top."),
        (0.5, "The house was full of balloons.", "There were {color} balloons everywhere."),
        ("{His} friends came to the party. {His} best friend {B} came too.",
         "{His} friend {B} and many other children came to the party."),
        "\n",
        ("{B} gave {A} a big box.", "{B} had a present for {A}. It was a big box."),
        ("{A} opened it slowly.", "{A} tore off the paper.", "{A} shook the box and opened it."),
        ("Inside was {a_gift}!", "It was {a_gift}!"),
        (0.7, '"Thank you, {B}!" said {A}. "I love it!"',
         '{A} jumped up and down. "It is just what I wanted!" {he} said.'),
        (0.5, "They sang a song, and {A} blew out the candles.",
         "Everyone sang, and then they ate the cake."),
        (0.5, "After the party, {A} played with the {gift} until bedtime."),
        ("It was the best birthday ever.",
         "That night, {A} fell asleep with the {gift} next to {him}.",
         "{A} was {happy}. {He} had the best friends in the world."),
    ],
    # Helping someone: one of four episodes.
    [
        (0.6, "{A} was a kind {kid}. {He} always tried to help others."),
        ("{one_day}, {A} was walking home from the {place}.",
         "{one_day}, {A} went outside to play."),
        (["{He} saw an old woman with two heavy bags.", "The old woman had to stop and rest.",
          '"Can I help you?" asked {A}.', '"Oh, yes please," said the old woman.',
          "{A} took one bag, and they walked to the old woman's house together.",
          (0.7, '"Thank you, dear," said the old woman. She gave {A} {a_food}.')],
         ["{He} saw a little bird on the ground. It had a hurt wing and could not fly.",
          "{A} picked up the bird very gently.",
          "{He} took it home, and {his} {mom} helped {him} make a soft bed for it.",
          (0.7, "Every day, {A} gave the bird water and seeds."),
          "After a week, the bird could fly again. It sang a happy song for {A}."],
         ["{He} saw {his} friend {B} sitting on the grass. {B} was crying.",
          '"My {toy} is broken," said {B}.', '"Don\'t be {sad}," said {A}. "I can help."',
          "{A} and {B} fixed the {toy} together.", '"Thank you, {A}!" said {B}.'],
         ["{He} saw a little kitten stuck in a tree. It was scared and could not get down.",
          (0.6, "The kitten cried and cried."),
          "{A} ran to get {his} {mom}.", "{His} {mom} got a ladder and helped the kitten down.",
          (0.6, "The kitten purred and rubbed against {A}'s leg.")]),
        "\n",
        (0.6, "{A} felt warm inside.", "Helping made {A} feel {happy}."),
        ("{A} learned that it feels good to help others.",
         "From that day on, {A} always helped when {he} could."),
    ],
    # A race or a game, with either outcome.
    [
        ("{one_day}, {A} and {his} friend {B} went to the park to play.",
         "{one_day}, {A}'s friend {B} came over, and they went to the park together."),
        (0.5, "The grass was soft and green.", "There were many children at the park."),
        (['"Let\'s have a race!" said {B}. "The first one to the big tree wins!"',
          "{A} and {B} stood side by side.", '"Ready, set, go!" they shouted.',
          "They ran as fast as they could.",
          (["{B} was fast, but {A} was faster. {A} got to the tree first!",
            (0.6, '"Good race!" said {B} with a smile.')],
           ["{A} ran fast, but {B} ran faster. {B} won the race.",
            "{A} was {sad} at first. Then {he} smiled.", '"Good race!" said {A}.'])],
         ['"Let\'s play hide and seek!" said {B}. "You hide, and I will look."',
          ("{A} hid behind a big tree.", "{A} hid under a bench.", "{A} hid behind a bush."),
          "{B} counted to ten. Then {bhe} looked and looked.",
          (0.6, "{bHe} looked by the slide. {bHe} looked by the swings."),
          ('At last, {B} found {A}. "I see you!" {bhe} said.',
           '{B} could not find {A}! At last, {A} jumped out and said, "Here I am!"'),
          "They laughed and played again and again."],
         ['"Let\'s play catch!" said {A}. {He} threw a big {color} ball to {B}.',
          "{B} caught it and threw it back.", (0.6, "They threw it higher and higher."),
          "Then the ball landed in a bush.", "{A} and {B} looked for it together.",
          ("{B} found it first.", "{A} found it under some leaves.")]),
        "\n",
        (0.6, "Soon they were tired, so they sat down to rest.",
         "After the game, they drank some water and ate {foods}."),
        ("It was a fun day. {A} and {B} were the best of friends.",
         '"Let\'s play again tomorrow," said {A}.',
         "From that day on, {A} and {B} played together every day."),
    ],
    # Growing a garden from seeds.
    [
        ("{one_day}, {A} found a small bag of seeds.",
         "{one_day}, {A}'s {mom} gave {him} a small bag of seeds."),
        (0.6, '"What are these?" asked {A}. "They are {plant} seeds," said {his} {mom}.'),
        "{A} dug a little hole in the garden and put the seeds in it.",
        ("Every day, {he} gave the seeds some water.", "Every morning, {A} watered the ground."),
        (0.5, "{He} pulled out the weeds, too.",
         "{He} put a little sign with {his} name by the seeds."),
        (0.6, "But nothing came up. {A} was {sad}.", "{A} waited and waited, but nothing grew."),
        ('"Be patient," said {his} {mom}. "Good things take time."'),
        "\n",
        ("{one_day}, {A} saw a tiny green shoot.",
         "After many days, a little green plant came up."),
        ("The plant grew bigger every day.", "The plant grew and grew in the warm sun."),
        ("At last, there were {num} big {plants} in the garden.",
         "Soon the plant was full of {plants}."),
        ('"Look at my {plants}!" said {A}.', '"{Mom}, come and see!" shouted {A}.'),
        (0.5, "{A} gave some {plants} to {his} friend {B}.",
         "{A} and {his} {mom} took the {plants} inside."),
        ("{A} was proud of {his} garden.", "From that day on, {A} loved to grow things.",
         "{A} learned that good things take time."),
    ],
)

# The memory game: its shape is fixed (only the list varies), so MEMORY_GAME finds every
# one and a test can check that the repeated list is the spoken one, word for word.
MEMORY_INTROS = ("Later, {A} played a memory game with {his} friend {B}.",
                 "After that, {A} and {his} friend {B} played a memory game.",
                 "{A}'s friend {B} said, \"Let's play a memory game!\"")
MEMORY_SAY = ('{X} said, "Listen: {items}."', '{X} went first. "Listen: {items}."',
              '{X} said slowly, "Listen: {items}."')
MEMORY_BACK = ('{Y} said it back: "{items}."', '{Y} thought for a moment and said: "{items}."',
               '{Y} closed {yhis} eyes and said: "{items}."')
MEMORY_END = ('"You remembered!" said {X}.',
              '"Yes, that is right!" said {X}. "You have a good memory."',
              '"You got them all!" said {X}.')
MEMORY_GAME = re.compile(r'"Listen: ([a-z]+(?:, [a-z]+)*)\." [^"]*: "([a-z]+(?:, [a-z]+)*)\."')
MEMORY_SHARE = 0.4

_SLOT = re.compile(r"\{[^}]*\}")
# A possessive or contracted 's is a word of its own (as in the Penn Treebank), so "Mia's"
# needs no lexicon entry beside "Mia"; other contractions ("don't") stay whole.
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|'s\b")


def split_words(text: str) -> list[str]:
    """The lowercase words of ``text``: letters and apostrophes, a trailing 's split off."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w.endswith("'s") and len(w) > 2:
            out += [w[:-2], "'s"]
        else:
            out.append(w)
    return out


def plural(noun: str) -> str:
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def a(phrase: str) -> str:
    # Every lexicon word that starts with a vowel letter starts with a vowel sound (there
    # is no "hour", "one-", "uni-" among them), so the letter decides.
    return f"{ARTICLES[phrase[0] in 'aeiou']} {phrase}"


def _counted() -> tuple[str, ...]:
    """The nouns that appear in the plural."""
    return tuple(n for sights in PLACES.values() for n in sights) + FOODS + PLANTS


@functools.lru_cache(maxsize=1)
def words() -> frozenset[str]:
    """Every word the generator can emit: the words of every upper-case table, plus plurals."""
    found = set()

    def walk(x):
        if isinstance(x, str):
            found.update(split_words(_SLOT.sub(" ", x)))
        elif isinstance(x, dict):
            walk(list(x.items()))
        elif isinstance(x, (tuple, list)):
            for y in x:
                walk(y)

    walk([v for k, v in globals().items() if k.isupper()])
    found.update(plural(n) for n in _counted())
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def _memory_words() -> tuple[str, ...]:
    # Any word of the lexicon, names included (lower-case, so split into unusual pieces):
    # the list is random, so the only way to say it back is to copy it token by token,
    # whatever the tokens are. That is what teaches the model to copy from its context.
    return tuple(sorted(w for w in words() if w.isalpha()))


def memory_games(text: str) -> list[tuple[list[str], list[str]]]:
    """Each memory game of ``text`` as (the list said, the list said back)."""
    return [(m[1].split(", "), m[2].split(", ")) for m in MEMORY_GAME.finditer(text)]


def _person(slots: dict, prefix: str, pronoun: str) -> None:
    subj, obj, poss, hers, kid = PRONOUNS[pronoun]
    slots.update({prefix + "he": subj, prefix + "He": subj.capitalize(), prefix + "him": obj,
                  prefix + "his": poss, prefix + "His": poss.capitalize(),
                  prefix + "hers": hers, prefix + "kid": kid})


def _cast(rng: random.Random) -> dict:
    """Draw everything one story refers to, once, so a toy or a name stays the same."""
    slots = {}
    names = {"she": GIRLS, "he": BOYS}
    hero = rng.choice(("she", "he"))
    friend = rng.choice(("she", "he"))
    slots["A"] = rng.choice(names[hero])
    slots["B"] = rng.choice([n for n in names[friend] if n != slots["A"]])
    _person(slots, "", hero)
    _person(slots, "b", friend)
    mom, mom_pronoun = rng.choice(GROWNUPS)
    _person(slots, "m", mom_pronoun)
    place = rng.choice(sorted(PLACES))
    sight = rng.choice(PLACES[place])
    toy, color = rng.choice(TOYS), rng.choice(COLORS)
    toy_look = color if rng.random() < 0.6 else f"{rng.choice(SIZES)} {color}"
    food, plant = rng.choice(FOODS), rng.choice(PLANTS)
    skill, skilling = rng.choice(SKILLS)
    pet, gift = rng.choice(PETS), rng.choice(GIFTS)
    slots.update(
        a_kid=a(f"{rng.choice(KID_LOOKS)} {slots['kid']}"),
        a_bkid=a(f"{rng.choice(KID_LOOKS)} {slots['bkid']}"),
        mom=mom, Mom=mom.capitalize(), toy=toy, a_toy=a(f"{toy_look} {toy}"), color=color,
        pet=pet, Pet=rng.choice(PET_NAMES), a_pet=a(f"{rng.choice(PET_LOOKS)} {pet}"),
        place=place, sights=plural(sight), a_sight=a(sight), num=rng.choice(NUMBERS[:9]),
        food=food, a_food=a(food), foods=plural(food), plant=plant, plants=plural(plant),
        gift=gift, a_gift=a(f"{rng.choice(COLORS)} {gift}"),
        skill=skill, skilling=skilling, game=rng.choice(GAMES), home=rng.choice(HOMES),
        happy=rng.choice(HAPPY), sad=rng.choice(SAD), age=rng.choice(NUMBERS[1:8]),
        one_day=rng.choice(ONE_DAY))
    return slots


def _render(step, rng: random.Random, slots: dict, out: list[str]) -> None:
    """Expand a grammar step into ``out``: str = text, list = sequence, tuple = choice."""
    if isinstance(step, str):
        out.append(step if step == "\n" else step.format_map(slots))
    elif isinstance(step, list):
        for s in step:
            _render(s, rng, slots, out)
    else:
        if isinstance(step[0], float):
            if rng.random() >= step[0]:
                return
            step = step[1:]
        _render(rng.choice(step), rng, slots, out)


def _memory_game(rng: random.Random, slots: dict) -> list[str]:
    x, y = ("A", "B") if rng.random() < 0.5 else ("B", "A")
    items = ", ".join(rng.sample(_memory_words(), rng.randint(6, 16)))
    roles = dict(slots, X=slots[x], Y=slots[y], yhis=slots["his" if y == "A" else "bhis"],
                 items=items)
    out = []
    for table in (MEMORY_INTROS, MEMORY_SAY, MEMORY_BACK, MEMORY_END):
        out.append(rng.choice(table).format_map(roles))
    return out


def _layout(pieces: list[str], rng: random.Random) -> str:
    """Sentences joined by spaces; some paragraph breaks kept, never two in a row."""
    text, fresh = "", True
    for p in pieces:
        if p == "\n":
            if not fresh and rng.random() < 0.7:
                text, fresh = text + "\n", True
        else:
            text, fresh = text + ("" if fresh else " ") + p, False
    return text.rstrip("\n")


def _draft(rng: random.Random, memory: bool) -> str:
    slots = _cast(rng)
    if rng.random() < 0.7:
        opening = rng.choice(ONCE)
    else:
        opening = rng.choice(OTHER_OPENINGS)
        if opening.startswith("One day"):
            slots["one_day"] = rng.choice(LATER)
    pieces = [opening.format_map(slots)]
    _render(INTRO, rng, slots, pieces)
    _render(SETTING, rng, slots, pieces)
    plot = rng.choice(PLOTS)
    _render(plot[:-1], rng, slots, pieces)
    if memory:
        pieces += ["\n", *_memory_game(rng, slots), "\n"]
    _render(plot[-1], rng, slots, pieces)
    return _layout(pieces, rng)


def story(rng: random.Random) -> str:
    """One story of 80 to 200 words, drawn with ``rng``."""
    # Decided once, outside the length check, so that the check cannot skew the share.
    memory = rng.random() < MEMORY_SHARE
    while True:
        text = _draft(rng, memory)
        if 80 <= len(split_words(text)) <= 200:
            return text


def corpus(split: str, count: int, seed: int = 0) -> list[str]:
    """Stories 0..count-1 of ``split`` ("train" or "heldout"); story i has its own seed."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'heldout'")
    # A str seed is hashed with SHA-512, not hash(): the same stories on every machine and
    # every run, whatever PYTHONHASHSEED says.
    return [story(random.Random(f"{split}/{seed}/{i}")) for i in range(count)]
